from lib import *
import os, struct, sys
d=os.path.dirname(os.path.abspath(__file__))
SEED=0x9e3779b97f4a7c15; INT=0xbf58476d1ce4e5b9; REAL=0x94d049bb133111eb
X=SEED^INT; R=SEED^REAL
if X>=1<<63: X-=1<<64
for variant in ('table_int_index_real','table_real_index_int'):
    p=f'{d}/H_{variant}.db'
    if os.path.exists(p): os.remove(p)
    c=sqlite3.connect(p); c.executescript("create table t(a); create index i on t(a);")
    rv=struct.unpack('>d',R.to_bytes(8,'big'))[0]
    c.execute("insert into t values(?)",(X if variant.startswith('table_int') else rv,)); c.commit(); c.close()
    db=DB(p); rt=root(p,'i'); t,cells,_=db.cells(rt)
    cell=bytearray(cells[0]); pl,k=varint(cell,0)
    # record: hdr=3, serial a, serial rowid(1), a(8), rowid(1)
    assert cell[k]==3, cell
    if variant.startswith('table_int'):
        assert cell[k+1]==6; cell[k+1]=7; cell[k+3:k+11]=R.to_bytes(8,'big')
    else:
        assert cell[k+1]==7; cell[k+1]=6; cell[k+3:k+11]=(X%(1<<64)).to_bytes(8,'big')
    db.rebuild(rt,t,[bytes(cell)]); db.save()
    c=sqlite3.connect(p); print(variant, c.execute("select typeof(a),a from t").fetchall(), c.execute("select typeof(a),a from t indexed by i where a is not null").fetchall(), c.execute("pragma integrity_check").fetchall()); c.close()
