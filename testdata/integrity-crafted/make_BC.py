from lib import *
import os
d=os.path.dirname(os.path.abspath(__file__))
def fresh(name):
    p=d+'/'+name
    if os.path.exists(p): os.remove(p)
    return p
def redefine(p, name, sql):
    c=sqlite3.connect(p); c.execute("PRAGMA writable_schema=ON"); c.execute("update sqlite_schema set sql=? where name=?",(sql,name)); c.commit(); c.close()
# B1: unique NOCASE index, two keys equal only up to an embedded NUL
p=fresh('B1_nocase_nul_unique.db')
c=sqlite3.connect(p); c.executescript("create table t(a TEXT); create index i on t(a collate nocase); insert into t values('a'||char(0)||'x'),('a'||char(0)||'y');"); c.close()
redefine(p,'i',"CREATE UNIQUE INDEX i ON t(a COLLATE NOCASE)")
# B2: binary index redefined NOCASE: order differs only past a NUL
p=fresh('B2_nocase_nul_order.db')
c=sqlite3.connect(p); c.executescript("create table t(a TEXT); create index i on t(a); insert into t values('a'||char(0)||'y'),('a'||char(0)||'x');"); c.close()
redefine(p,'i',"CREATE INDEX i ON t(a COLLATE NOCASE)")
# C: index entry with one trailing byte after its rowid
p=fresh('C_index_trailing_byte.db')
c=sqlite3.connect(p); c.executescript("create table t(a TEXT); create index i on t(a); insert into t values('p'),('q'),('r');"); c.close()
db=DB(p); r=root(p,'i'); t,cells,_=db.cells(r)
cell=cells[1]; pl,k=varint(cell,0)
cells[1]=enc_varint(pl+1)+cell[k:]+b'\x07'
db.rebuild(r,t,cells); db.save()
