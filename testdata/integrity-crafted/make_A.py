from lib import *
import os
d=os.path.dirname(os.path.abspath(__file__)); os.makedirs(d,exist_ok=True)
p=d+'/A_9byte_payload_varint.db'
if os.path.exists(p): os.remove(p)
c=sqlite3.connect(p); c.execute("create table t(a TEXT)"); c.execute("insert into t values(?)",('x'*147,)); c.commit(); c.close()
db=DB(p); r=root(p,'t'); t,cells,_=db.cells(r)
cell=cells[0]; pl,k=varint(cell,0); print('payload',pl,k)
assert pl>=128
new=bytes([0x80]*8+[pl])+cell[k:]
v,n=varint(new,0); assert (v,n)==(pl,9)
db.rebuild(r,t,[new]); db.save()
