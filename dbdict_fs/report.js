// dbdict report: draws the plots (inline SVG) and the job table from the JSON block #data.
// No library, no network. Points are drawn as one <path> per kind (cheap at 10k jobs);
// hover and click find the nearest point in fig._pts ([x, y, rows, text()] in SVG units).
(function(){
var D=JSON.parse(document.getElementById('data').textContent),rows=D.rows,NROWS=rows.length;
var COLORS=['#1f77b4','#ff7f0e','#2ca02c','#d62728','#9467bd','#8c564b','#e377c2','#7f7f7f','#bcbd22','#17becf'];
var RAMP=['#0d0887','#5c01a6','#9c179e','#cc4778','#ed7953','#fdb42f'];  // metric, best first
var KEY='dbdict-report:'+location.pathname;
var S={q:'',brush:{},sort:-1,dir:1,limit:PAGE};  // what a reload keeps (with the scroll)

function esc(v){return String(v).replace(/&/g,'&amp;').replace(/</g,'&lt;').replace( />/g,'&gt;').replace(/'/g,'&#39;');}
function num(v){return typeof v==='number'&&isFinite(v)?v:null;}
function bad(v){return v==='NaN'||v==='Infinity'||v==='-Infinity';}
function fmt(v){if(v===null||v===undefined)return '';if(typeof v==='number'&&!Number.isInteger(v))return String(+v.toPrecision(5));
if(typeof v==='object')return JSON.stringify(v);return String(v);}
function f1(v){return v.toFixed(1);}
function pathOf(ps){return 'M'+ps.map(function(q){return f1(q[0])+' '+f1(q[1]);}).join('L');}

// ---------------------------------------------------------------- scales and frames
function ticks(lo,hi,log){var t=[];if(log){for(var e=Math.floor(Math.log10(lo));e<=Math.ceil(Math.log10(hi));e++)t.push(Math.pow(10,e));return t;}
if(hi===lo)return [lo];var raw=(hi-lo)/5,mag=Math.pow(10,Math.floor(Math.log10(raw))),step=mag;
[1,2,2.5,5,10].some(function(m){step=m*mag;return step>=raw;});
for(var v=Math.ceil(lo/step)*step;v<=hi+step*1e-9;v+=step)t.push(+v.toPrecision(12));t.step=step;return t;}
function scale(vals,log,a,b,pad){  // a function value -> pixel, with .ticks and .log
var vs=vals.filter(function(v){return v!==null&&(!log||v>0);}).map(function(v){return log?Math.log10(v):v;});
var lo=Math.min.apply(null,vs),hi=Math.max.apply(null,vs);if(!vs.length){lo=0;hi=1;}if(hi===lo){lo-=0.5;hi+=0.5;}
var p=(hi-lo)*(pad||0);lo-=p;hi+=p;
var f=function(v){return a+((log?Math.log10(v):v)-lo)/(hi-lo)*(b-a);};
f.lo=log?Math.pow(10,lo):lo;f.hi=log?Math.pow(10,hi):hi;f.log=log;
var all=ticks(f.lo,f.hi,log);f.ticks=all.filter(function(t){return t>=f.lo*(1-1e-9)&&t<=f.hi*(1+1e-9);});
f.label=function(t){return log||!all.step?tick(t):String(+t.toFixed(Math.max(0,Math.ceil(-Math.log10(all.step))+1)));};return f;}
function tick(t){return String(+t.toPrecision(3));}
// the frame of a plot: box, grid, tick labels, axis names; G the plot area {l,t,r,b}
function frame(W,H,G,sx,sy,xlabel,ylabel){var o=['<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 '+W+' '+H+'" preserveAspectRatio="xMinYMin meet">',
'<rect x='+G.l+' y='+G.t+' width='+(G.r-G.l)+' height='+(G.b-G.t)+' fill=none stroke="#bbb" />'];
if(sx)sx.ticks.forEach(function(t){var x=f1(sx(t));
o.push('<line x1='+x+' x2='+x+' y1='+G.t+' y2='+G.b+' stroke="#eee" /><text x='+x+' y='+(G.b+14)+' text-anchor=middle>'+sx.label(t)+'</text>');});
sy.ticks.forEach(function(t){var y=f1(sy(t));
o.push('<line x1='+G.l+' x2='+G.r+' y1='+y+' y2='+y+' stroke="#eee" /><text x='+(G.l-4)+' y='+(+y+4)+' text-anchor=end>'+sy.label(t)+'</text>');});
o.push('<text x='+f1((G.l+G.r)/2)+' y='+(H-4)+' text-anchor=middle>'+esc(xlabel)+(sx&&sx.log?' (log)':'')+'</text>');
o.push('<text transform="translate(12 '+f1((G.t+G.b)/2)+') rotate(-90)" text-anchor=middle>'+esc(ylabel)+'</text>');return o;}
function dots(pts,cls,color,size,hollow){if(!pts.length)return '';var d=pts.map(function(p){return 'M'+f1(p[0])+' '+f1(p[1])+'h0';}).join('');
return '<path class="'+cls+'" d="'+d+'" stroke="'+color+'" stroke-width='+size+' stroke-linecap=round fill=none'+(hollow?' stroke-opacity=.35':'')+' />';}
function crosses(pts,cls){if(!pts.length)return '';var d=pts.map(function(p){var x=p[0],y=p[1];
return 'M'+f1(x-4)+' '+f1(y-4)+'l8 8M'+f1(x-4)+' '+f1(y+4)+'l8 -8';}).join('');
return '<path class="'+cls+'" d="'+d+'" stroke="#d62728" stroke-width=2 fill=none />';}

// ---------------------------------------------------------------- what a point says
function paramsText(r){return D.params.map(function(p){return p.key+'='+fmt(rows[r][p.col]);}).join(', ');}
function groupText(g){var t=paramsText(g[0][0])+'\n';
if(g[1]!==null)t+=D.metric+' = '+fmt(g[1])+(g[0].length>1?' (mean of '+(g[0].length-g[4])+', '+fmt(g[2])+' to '+fmt(g[3])+')':'');
if(g[4])t+=(g[1]!==null?'; ':'')+g[4]+' of '+g[0].length+' diverged';return t+'\n'+rows[g[0][0]][0]+(g[0].length>1?' and '+(g[0].length-1)+' more':'');}
function rowText(r){return paramsText(r)+'\n'+D.metric+' = '+fmt(rows[r][D.metricCol])+'\n'+rows[r][0];}

// ---------------------------------------------------------------- one panel per parameter
var TOP=rows.some(function(r){return bad(r[D.metricCol]);})?28:4;  // a strip above the plot area for diverged runs
function paramPanel(fig,p){var W=360,H=250,G={l:52,t:TOP+8,r:350,b:H-36},groups=D.groups,pts=[],whisk=[],ups=[];
var xv=function(g){return rows[g[0][0]][p.col];};
var sy=scale([].concat.apply([],groups.map(function(g){return [g[2],g[3]];})),false,G.b,G.t,0.05),sx,xs,o;
if(p.kind==='num'){sx=scale(groups.map(function(g){return num(xv(g));}),p.log,G.l,G.r,0.04);xs=function(g){var v=num(xv(g));return v===null||(p.log&&v<=0)?null:sx(v);};
o=frame(W,H,G,sx,sy,p.key,D.metric);}
else{var band=(G.r-G.l)/p.cats.length;xs=function(g,k){var i=p.cats.indexOf(fmt(xv(g)));return G.l+band*(i+0.5)+((k*7919)%97/97-0.5)*band*0.4;};
o=frame(W,H,G,null,sy,'',D.metric);p.cats.forEach(function(c,i){var x=G.l+band*(i+0.5);
o.push('<text class=cat x='+f1(x)+' y='+(G.b+14)+' text-anchor=middle>'+(c.length>18?esc(c.slice(0,17))+'\u2026<title>'+esc(c)+'</title>':esc(c))+'</text>');});
o.push('<text x='+f1((G.l+G.r)/2)+' y='+(H-4)+' text-anchor=middle>'+esc(p.key)+'</text>');}
var bycat={};
groups.forEach(function(g,k){var x=xs(g,k);if(x===null)return;
var say=function(){return groupText(g);};
if(g[1]!==null){pts.push([x,sy(g[1]),g[0],say]);if(g[3]!==g[2])whisk.push('M'+f1(x)+' '+f1(sy(g[2]))+'V'+f1(sy(g[3])));
var key=p.kind==='num'?num(xv(g)):fmt(xv(g));(bycat[key]=bycat[key]||[]).push(g[1]);}
if(g[4])ups.push([x,TOP-8,g[0],say]);});
if(p.kind==='num'){var line=Object.keys(bycat).map(Number).sort(function(a,b){return a-b;}).map(function(x){var m=bycat[x];
return [sx(x),sy(m.reduce(function(a,b){return a+b;},0)/m.length)];});
// the mean per value, where configurations share values (a grid), not through a random search's scatter
if(line.length>1&&line.length<pts.length)
o.push('<g class=series data-label=mean><path d="'+pathOf(line)+'" stroke="#1f77b4" stroke-width=1.5 fill=none /></g>');}
else p.cats.forEach(function(c,i){var m=(bycat[c]||[]).slice().sort(function(a,b){return a-b;});if(!m.length)return;
var q=function(f){return m[Math.min(m.length-1,Math.floor(f*(m.length-1)+0.5))];},x=G.l+band*(i+0.5),w=band*0.6;
o.push('<g class=box data-cat="'+esc(c)+'"><path d="M'+f1(x)+' '+f1(sy(m[0]))+'V'+f1(sy(q(.25)))+'M'+f1(x)+' '+f1(sy(q(.75)))+'V'+f1(sy(m[m.length-1]))+'" stroke="#888" />'+
'<rect x='+f1(x-w/2)+' y='+f1(sy(q(.75)))+' width='+f1(w)+' height='+f1(Math.max(1,sy(q(.25))-sy(q(.75))))+' fill="#1f77b4" fill-opacity=.12 stroke="#1f77b4" />'+
'<path d="M'+f1(x-w/2)+' '+f1(sy(q(.5)))+'h'+f1(w)+'" stroke="#1f77b4" stroke-width=2 /></g>');});
if(whisk.length)o.push('<path class=spread d="'+whisk.join('')+'" stroke="#1f77b4" stroke-opacity=.4 fill=none />');
o.push(dots(pts,'points','#1f77b4',6));
if(ups.length)o.push('<text x='+(G.r)+' y=9 text-anchor=end fill="#d62728">'+ups.length+' diverged \u2715</text>'+crosses(ups,'diverged'));
fig._pts=pts.concat(ups);return o.join('')+'</svg>';}

// ---------------------------------------------------------------- parallel coordinates
var PC=null;  // {axes:[{name, y(group)->px}], ys:[[px per axis] per group], passes}
function parallel(fig){var W=960,H=300,G={t:36,b:H-30},axes=D.params.slice(),n=axes.length+1,gap=(W-120)/(n-1||1),groups=D.groups;
var ax=[];axes.forEach(function(p,i){var x=60+i*gap,y;
if(p.kind==='num'){var s=scale(groups.map(function(g){return num(rows[g[0][0]][p.col]);}),p.log,G.b,G.t,0.03);
y=function(g){var v=num(rows[g[0][0]][p.col]);return v===null?G.t-14:s(v);};ax.push({name:p.key,x:x,y:y,ticks:s.ticks.map(function(t){return [s(t),s.label(t)];})});}
else{var step=(G.b-G.t)/Math.max(1,p.cats.length-1);y=function(g){var i=p.cats.indexOf(fmt(rows[g[0][0]][p.col]));return p.cats.length>1?G.b-i*step:(G.t+G.b)/2;};
ax.push({name:p.key,x:x,y:y,ticks:p.cats.map(function(c,i){return [p.cats.length>1?G.b-i*step:(G.t+G.b)/2,c.length>14?c.slice(0,13)+'\u2026':c];})});}});
var ms=scale(groups.map(function(g){return g[1];}),false,G.b,G.t,0.03);
ax.push({name:D.metric,x:60+(n-1)*gap,y:function(g){return g[1]===null?G.t-14:ms(g[1]);},
ticks:ms.ticks.map(function(t){return [ms(t),ms.label(t)];}).concat(groups.some(function(g){return g[1]===null;})?[[G.t-14,'NaN']]:[])});
var order=groups.map(function(g,k){return k;}).filter(function(k){return groups[k][1]!==null;}).sort(function(a,b){return (groups[a][1]-groups[b][1])*(D.maximize?-1:1);});
var color=groups.map(function(g){return g[1]===null?'#d62728':null;});
order.forEach(function(k,r){color[k]=RAMP[Math.floor(r*RAMP.length/order.length)];});
PC={fig:fig,W:W,H:H,G:G,ax:ax,color:color,ys:groups.map(function(g){return ax.map(function(a){return a.y(g);});})};
drawParallel();}
function passes(k){for(var a in S.brush){var b=S.brush[a],y=PC.ys[k][a];if(y<b[0]||y>b[1])return false;}return true;}
function drawParallel(){if(!PC)return;var o=['<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 '+PC.W+' '+PC.H+'">'],paths={},ax=PC.ax;
PC.ys.forEach(function(ys,k){var c=passes(k)?PC.color[k]:'#ddd';paths[c]=(paths[c]||'')+'M'+ys.map(function(y,a){return f1(ax[a].x)+' '+f1(y);}).join('L');});
var alpha=PC.ys.length>1000?.2:.7;  // filtered out under diverged under worst, the best on top
['#ddd','#d62728'].concat(RAMP.slice().reverse()).forEach(function(c){if(paths[c])
o.push('<path class=lines data-color="'+c+'" d="'+paths[c]+'" stroke="'+c+'" stroke-opacity='+(c==='#ddd'?.6:alpha)+' fill=none />');});
ax.forEach(function(a,i){o.push('<g class=axis data-axis='+i+'><line x1='+a.x+' x2='+a.x+' y1='+PC.G.t+' y2='+PC.G.b+' stroke="#333" />'+
a.ticks.map(function(t){return '<text x='+(a.x-5)+' y='+f1(t[0]+4)+' text-anchor=end>'+esc(t[1])+'</text>';}).join('')+
'<text x='+a.x+' y='+(PC.H-8)+' text-anchor=middle font-weight=bold>'+esc(a.name)+'</text>'+
(S.brush[i]?'<rect class=brush x='+(a.x-7)+' y='+f1(S.brush[i][0])+' width=14 height='+f1(S.brush[i][1]-S.brush[i][0])+' fill="#000" fill-opacity=.15 stroke="#000" />':'')+
'<rect class=brush-area data-axis='+i+' x='+(a.x-14)+' y='+(PC.G.t-20)+' width=28 height='+(PC.G.b-PC.G.t+24)+' fill=transparent style="cursor:ns-resize" /></g>');});
PC.fig.querySelector('.svg').innerHTML=o.join('')+'</svg>';}
function brushing(){var drag=null;
document.addEventListener('mousedown',function(e){var t=e.target;if(!t.classList||!t.classList.contains('brush-area'))return;
e.preventDefault();drag={axis:+t.dataset.axis,y0:svgXY(PC.fig.querySelector('svg'),e)[1]};});
document.addEventListener('mousemove',function(e){if(!drag)return;var y=svgXY(PC.fig.querySelector('svg'),e)[1];
if(Math.abs(y-drag.y0)>2){S.brush[drag.axis]=[Math.min(y,drag.y0),Math.max(y,drag.y0)];drawParallel();}});
document.addEventListener('mouseup',function(e){if(!drag)return;var y=svgXY(PC.fig.querySelector('svg'),e)[1];
if(Math.abs(y-drag.y0)>2)S.brush[drag.axis]=[Math.min(y,drag.y0),Math.max(y,drag.y0)];else delete S.brush[drag.axis];
drag=null;drawParallel();view();});}

// ---------------------------------------------------------------- curves and searches
function curves(fig){var W=960,H=340,G={l:66,t:12,r:640,b:H-36},cs=D.curves,all=[];
cs.forEach(function(c){c.pts.forEach(function(p){all.push(p);});});
var sx=scale(all.map(function(p){return p[0];}),false,G.l,G.r),sy=scale([].concat.apply([],all.map(function(p){return [p[2],p[3]];})),false,G.b,G.t,0.05);
var o=frame(W,H,G,sx,sy,'step',D.metric),pts=[],k=0;
cs.forEach(function(c,i){var col=c.pruned?'#999':COLORS[k++%COLORS.length],d=c.pts.map(function(p){return f1(sx(p[0]))+' '+f1(sy(p[1]));}).join('L');
o.push('<g class="series'+(c.pruned?' pruned':'')+'" data-label="'+esc(c.label)+'"><title>'+esc(c.label)+'</title>');
if(c.pts.some(function(p){return p[2]!==p[3];}))o.push('<polygon points="'+c.pts.map(function(p){return f1(sx(p[0]))+','+f1(sy(p[3]));}).join(' ')+' '+
c.pts.slice().reverse().map(function(p){return f1(sx(p[0]))+','+f1(sy(p[2]));}).join(' ')+'" fill="'+col+'" fill-opacity=.12 />');
o.push('<path d="M'+d+'" stroke="'+col+'" stroke-width='+(c.pruned?1:1.8)+(c.pruned?' stroke-dasharray="4 3"':'')+' fill=none /></g>');
c.pts.forEach(function(p){pts.push([sx(p[0]),sy(p[1]),c.rows,function(){
return c.label+(c.pruned?' (pruned)':'')+'\nstep '+fmt(p[0])+': '+D.metric+' = '+fmt(p[1]);}]);});
if(i<16){var y=G.t+10+i*18;
o.push('<g class=legend data-rows="'+c.rows.join(' ')+'" style="cursor:pointer"><line x1='+(G.r+12)+' x2='+(G.r+32)+' y1='+y+' y2='+y+' stroke="'+col+'" stroke-width=2'+
(c.pruned?' stroke-dasharray="4 3"':'')+' /><text x='+(G.r+36)+' y='+(y+4)+'>'+esc((c.label.length>48?c.label.slice(0,47)+'\u2026':c.label)+(c.pruned?' (pruned)':''))+
'<title>'+esc(c.label)+'</title></text></g>');}});
if(cs.length>16)o.push('<text x='+(G.r+12)+' y='+(G.t+10+16*18)+'>and '+(cs.length-16)+' more</text>');
fig._pts=pts;return o.join('')+'</svg>';}
function bestSoFar(fig,s){var W=960,H=280,G={l:56,t:TOP+8,r:770,b:H-36},t=s.trials,sign=D.maximize?-1:1;
var sx=scale(t.map(function(q){return q[0];}),false,G.l,G.r,0.02),sy=scale(t.map(function(q){return num(q[1]);}),false,G.b,G.t,0.05);
var o=frame(W,H,G,sx,sy,'trial',D.metric),done=[],pruned=[],other=[],ups=[],line=[],best=null;
t.forEach(function(q){var v=num(q[1]),x=sx(q[0]),p;
var say=function(){return rowText(q[2])+'\n'+q[3]+(v===null?' (diverged)':'');};
if(v===null){if(bad(q[1]))ups.push([x,TOP-8,[q[2]],say]);return;}
p=[x,sy(v),[q[2]],say];(q[3]==='done'?done:q[3]==='pruned'?pruned:other).push(p);
if(q[3]==='done'&&(best===null||sign*v<sign*best)){if(best!==null)line.push([x,sy(best)]);best=v;line.push([x,sy(v)]);}});
if(line.length){line.push([G.r,line[line.length-1][1]]);
o.push('<g class=series data-label="best so far"><path d="'+pathOf(line)+'" stroke="#2ca02c" stroke-width=2 fill=none /></g>');}
o.push(dots(other,'other','#999',5),dots(done,'done','#1f77b4',6),dots(pruned,'pruned','#ff7f0e',6,true),crosses(ups,'diverged'));
var ly=G.t+8;[['#2ca02c','best so far ('+(best===null?'none':fmt(best))+')'],
['#1f77b4',done.length+' done'],['#ff7f0e',pruned.length+' pruned'],['#d62728',ups.length+' diverged']].forEach(function(l,i){
o.push('<line x1='+(G.r+10)+' x2='+(G.r+24)+' y1='+(ly+i*18)+' y2='+(ly+i*18)+' stroke="'+l[0]+'" stroke-width=3 />'+
'<text class=legend x='+(G.r+28)+' y='+(ly+i*18+4)+'>'+esc(l[1])+'</text>');});
fig._pts=done.concat(pruned,other,ups);return o.join('')+'</svg>';}

// ---------------------------------------------------------------- hover and click
var tip=document.createElement('div');tip.id='tip';document.body.appendChild(tip);
function svgXY(svg,e){var r=svg.getBoundingClientRect(),vb=svg.viewBox.baseVal;return [(e.clientX-r.left)*vb.width/r.width,(e.clientY-r.top)*vb.height/r.height];}
function nearest(fig,e){var svg=fig.querySelector('svg');if(!svg||!fig._pts)return null;var xy=svgXY(svg,e),best=null,d0=100;
fig._pts.forEach(function(p){var d=(p[0]-xy[0])*(p[0]-xy[0])+(p[1]-xy[1])*(p[1]-xy[1]);if(d<d0){d0=d;best=p;}});return best;}
document.querySelectorAll('figure.plot').forEach(function(fig){if(fig.dataset.plot==='parallel')return;
fig.addEventListener('mousemove',function(e){var p=nearest(fig,e);if(!p){tip.style.display='none';return;}
tip.textContent=p[3]();tip.style.display='block';tip.style.left=Math.min(e.clientX+14,window.innerWidth-tip.offsetWidth-8)+'px';tip.style.top=(e.clientY+14)+'px';});
fig.addEventListener('mouseleave',function(){tip.style.display='none';});
fig.addEventListener('click',function(e){var l=e.target.closest&&e.target.closest('.legend');
if(l&&l.dataset.rows){goRow(l.dataset.rows.split(' ').map(Number));return;}var p=nearest(fig,e);if(p)goRow(p[2]);});});
document.addEventListener('click',function(e){var a=e.target.closest&&e.target.closest('a.row-link');if(a){e.preventDefault();goRow([+a.dataset.row]);}});
function goRow(rs){var shown=view.rows;if(shown.indexOf(rs[0])<0){S.q='';document.getElementById('filter').value='';S.brush={};drawParallel();view();shown=view.rows;}
var at=shown.indexOf(rs[0]);if(at>=S.limit){S.limit=Infinity;draw();}
document.querySelectorAll('#alljobs tr.hl').forEach(function(tr){tr.classList.remove('hl');});var first=null;
rs.forEach(function(r){var tr=document.querySelector('#alljobs tr[data-row="'+r+'"]');if(tr){tr.classList.add('hl');first=first||tr;}});
if(first)first.scrollIntoView({block:'center'});}

// ---------------------------------------------------------------- the job table
var tb=document.querySelector('#alljobs tbody'),ths=document.querySelectorAll('#alljobs th');
var inGroup=new Int32Array(NROWS).fill(-1);D.groups.forEach(function(g,k){g[0].forEach(function(r){inGroup[r]=k;});});
function view(){var q=S.q.toLowerCase(),brushed=Object.keys(S.brush).length>0,out=[];
for(var r=0;r<NROWS;r++){if(brushed&&(inGroup[r]<0||!passes(inGroup[r])))continue;
if(q&&!rows[r].some(function(v){return fmt(v).toLowerCase().indexOf(q)>=0;}))continue;out.push(r);}
if(S.sort>=0){var c=S.sort,dir=S.dir;out.sort(function(a,b){var x=rows[a][c],y=rows[b][c],ex=x===null||x===undefined||x==='',ey=y===null||y===undefined||y==='';
if(ex||ey)return ex===ey?0:ex?1:-1;if(x===y)return 0;if(typeof x==='number'&&typeof y==='number')return dir*(x-y);return dir*(String(x)<String(y)?-1:1);});}
view.rows=out;document.getElementById('clear').style.display=brushed?'':'none';
ths.forEach(function(t){t.className=+t.dataset.col===S.sort?(S.dir>0?'asc':'desc'):'';});draw();}
function draw(){var v=view.rows,h=[],n=Math.min(v.length,S.limit);for(var i=0;i<n;i++){var r=rows[v[i]],c=[];
for(var j=0;j<r.length;j++)c.push('<td'+(bad(r[j])?' class=bad':'')+'>'+esc(fmt(r[j]))+'</td>');h.push('<tr data-row='+v[i]+'>'+c.join('')+'</tr>');}
tb.innerHTML=h.join('');var more=document.getElementById('more');
document.getElementById('shown').textContent=(n<v.length?'first '+n+' of ':'')+v.length+' of '+NROWS+' jobs';
more.style.display=n<v.length?'':'none';more.textContent='show all '+v.length;}
document.getElementById('more').addEventListener('click',function(){S.limit=Infinity;draw();});
document.getElementById('clear').addEventListener('click',function(){S.brush={};drawParallel();view();});
ths.forEach(function(th){th.addEventListener('click',function(){var c=+th.dataset.col;S.dir=c===S.sort?-S.dir:1;S.sort=c;view();});});
document.getElementById('filter').addEventListener('input',function(e){S.q=e.target.value;view();});

// ---------------------------------------------------------------- --watch: reload on a new version
function restore(){var saved=null;try{saved=JSON.parse(sessionStorage.getItem(KEY));sessionStorage.removeItem(KEY);}catch(e){}
if(!saved)return null;S.q=saved.q||'';S.brush=saved.brush||{};S.sort=saved.sort;S.dir=saved.dir;S.limit=saved.limit<0?Infinity:saved.limit;
document.getElementById('filter').value=S.q;return saved;}
function watch(){var probe=document.createElement('iframe');probe.name='dbdict-watch';probe.hidden=true;document.body.appendChild(probe);
var url=location.href.split('#')[0].split('?')[0];
window.addEventListener('message',function(e){if(e.source!==probe.contentWindow||!e.data||!e.data.dbdictStamp||e.data.dbdictStamp===STAMP)return;
try{sessionStorage.setItem(KEY,JSON.stringify({x:scrollX,y:scrollY,q:S.q,brush:S.brush,sort:S.sort,dir:S.dir,limit:S.limit===Infinity?-1:S.limit}));}catch(err){}
location.reload();});
setInterval(function(){probe.src=url+'?v='+Date.now();},D.watch*1000);}

var saved=restore();
D.params.forEach(function(p){var fig=document.querySelector('figure[data-param="'+CSS.escape(p.key)+'"]');if(fig)fig.querySelector('.svg').innerHTML=paramPanel(fig,p);});
var pf=document.querySelector('figure[data-plot=parallel]');if(pf){parallel(pf);brushing();}
var cf=document.querySelector('figure[data-plot=curves]');if(cf&&D.curves&&D.curves.length)cf.querySelector('.svg').innerHTML=curves(cf);
D.searches.forEach(function(s){var f=document.querySelector('figure[data-plot=best-so-far][data-search="'+CSS.escape(s.name)+'"]');
if(f)f.querySelector('.svg').innerHTML=bestSoFar(f,s);});
view();
if(saved)window.scrollTo(saved.x,saved.y);
if(D.watch>0)watch();
})();
