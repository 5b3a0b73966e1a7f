from lib import *
import os
d=os.path.dirname(os.path.abspath(__file__))
def make(name, tree, fn):
    p=f'{d}/{name}.db'
    if os.path.exists(p): os.remove(p)
    c=sqlite3.connect(p); c.executescript("create table t(a); create index i on t(a); insert into t values(5),(7),(9);"); c.commit(); c.close()
    db=DB(p); rt=root(p,tree); t,cells,_=db.cells(rt)
    cell=bytearray(cells[1]); pl,k=varint(cell,0)
    if t==13: _,k2=varint(cell,k); k+=k2
    rec=bytes(cell[k:]); head=bytes(cell[:k])
    rec=fn(rec)
    if t==13: _,kk=varint(cell,0); cells[1]=enc_varint(len(rec))+bytes(cell[kk:k])+rec
    else: cells[1]=enc_varint(len(rec))+rec
    db.rebuild(rt,t,cells); db.save()
J3=lambda r: bytes([0x80,0x04])+r[1:]            # header size 3 as 0x80 0x04? (header grows by one)
make('J3_noncanonical_header_size_index','i', lambda r: bytes([0x80,4])+r[1:])
make('J4_noncanonical_serial_table','t', lambda r: bytes([r[0]+1,0x80,r[1]])+r[2:])
make('J5_noncanonical_header_size_table','t', lambda r: bytes([0x80,r[0]+1])+r[1:])
