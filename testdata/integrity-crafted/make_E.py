from lib import *
import os, struct
d=os.path.dirname(os.path.abspath(__file__))
p=d+'/E_hash_zeroing_int_vs_real.db'
if os.path.exists(p): os.remove(p)
SEED=0x9e3779b97f4a7c15
r=struct.unpack('>d', SEED.to_bytes(8,'big'))[0]
print(r)
c=sqlite3.connect(p); c.executescript("create table t(a); create index i on t(a);"); c.execute("insert into t values(?)",(r,)); c.commit(); c.close()
db=DB(p); rt=root(p,'t'); t,cells,_=db.cells(rt)
cell=bytearray(cells[0]); pl,k=varint(cell,0); _,k2=varint(cell,k)
rec=k+k2  # record start: header size, serial types
assert cell[rec+1]==7, cell[rec:rec+3]
cell[rec+1]=6
db.rebuild(rt,t,[bytes(cell)]); db.save()
c=sqlite3.connect(p); print(c.execute("select typeof(a), a from t").fetchall()); c.close()
