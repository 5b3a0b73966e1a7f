# index entries whose serial types are non-canonical varints (0x80 0x01 for 1): a record reads
# them as 1, a lookup's compare reads the first byte (0x80) as the type
from lib import *
import os
d=os.path.dirname(os.path.abspath(__file__))
def make(name, which):
    p=f'{d}/{name}.db'
    if os.path.exists(p): os.remove(p)
    c=sqlite3.connect(p); c.executescript("create table t(a); create index i on t(a); insert into t values(5),(7),(9);"); c.commit(); c.close()
    db=DB(p); rt=root(p,'i'); t,cells,_=db.cells(rt)
    cell=bytearray(cells[1]); pl,k=varint(cell,0)
    rec=cell[k:]
    assert rec[0]==3 and rec[1]==1 and rec[2]==1, rec
    if which=='key': rec=bytes([4,0x80,0x01,0x01])+rec[3:]
    else: rec=bytes([4,0x01,0x80,0x01])+rec[3:]
    cells[1]=enc_varint(len(rec))+bytes(rec)
    db.rebuild(rt,t,cells); db.save()
    c=sqlite3.connect(p); print(name, c.execute("select a from t indexed by i where a>0").fetchall(), c.execute("pragma integrity_check").fetchall()); c.close()
make('J1_noncanonical_serial_key','key')
make('J2_noncanonical_serial_rowid','rowid')
