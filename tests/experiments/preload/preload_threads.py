"""A module that starts a thread at import: a zygote that imported it must not fork."""

import os
import threading

IMPORTED_IN = os.getpid()
threading.Thread(target=threading.Event().wait, daemon=True, name="started-at-import").start()
