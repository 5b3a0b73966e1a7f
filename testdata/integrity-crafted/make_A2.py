from lib import *
import os
d=os.path.dirname(os.path.abspath(__file__))
p=d+'/A2_9byte_payload_varint_index.db'
if os.path.exists(p): os.remove(p)
c=sqlite3.connect(p); c.execute("PRAGMA page_size=4096"); c.execute("create table t(a TEXT)"); c.execute("create index i on t(a)"); c.execute("insert into t values(?)",('x'*140,)); c.commit(); c.close()
db=DB(p); r=root(p,'i'); t,cells,_=db.cells(r)
cell=cells[0]; pl,k=varint(cell,0); print('payload',pl,k)
new=bytes([0x80]*8+[pl])+cell[k:]
db.rebuild(r,t,[new]); db.save()
