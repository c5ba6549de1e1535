# Two commands for a newcomer: `make demo` and `make test`. Each builds the venv it needs.
# editable_mode=compat installs a plain .pth path entry: the default editable finder costs
# every dbdict command ~15 ms of start-up (it imports pathlib and urllib). compileall writes
# the bytecode up front, which PYTHONDONTWRITEBYTECODE=1 environments would otherwise
# recompile from source at every start (~17 ms).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo test test-slow bench clean

$(BIN)/.installed: setup.cfg setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -m compileall -q dbdict_fs
	touch $@

install: $(BIN)/.installed

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh

# tests/system-deps.sh installs (as root, with apt-get) or names the system packages the
# tests drive for real (chromium, FUSE, strace, faketime), so none of them skips unseen.
test: install
	bash tests/system-deps.sh
	$(BIN)/python -m pytest -q

test-slow: install
	bash tests/system-deps.sh
	$(BIN)/python -m pytest -q --run-slow

bench: install
	$(BIN)/python bench/run_overhead.py

clean:
	rm -rf $(VENV) build *.egg-info demo-tree
