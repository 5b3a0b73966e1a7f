import sqlite3, struct, os
def varint(b, i):
    v=0
    for k in range(9):
        c=b[i+k]
        if k==8: return (v<<8)|c, 9
        v=(v<<7)|(c&0x7f)
        if c<0x80: return v, k+1
def enc_varint(v):
    if v <= 0x7f: return bytes([v])
    if v > 0x00ffffffffffffff:
        out=[v & 0xff]; v >>= 8
        for _ in range(8): out.append((v&0x7f)|0x80); v >>= 7
        return bytes(reversed(out))
    out=[v&0x7f]; v >>= 7
    while v: out.append((v&0x7f)|0x80); v >>= 7
    return bytes(reversed(out))
class DB:
    def __init__(s, path):
        s.path=path; s.b=bytearray(open(path,'rb').read())
        ps=struct.unpack('>H', s.b[16:18])[0]; s.ps=65536 if ps==1 else ps
        s.usable=s.ps-s.b[20]
    def page(s,n): return s.b[(n-1)*s.ps:n*s.ps]
    def setpage(s,n,data): s.b[(n-1)*s.ps:n*s.ps]=data
    def save(s,path=None): open(path or s.path,'wb').write(s.b)
    def cells(s,n):
        """raw cells of a leaf page without overflow: list of bytes"""
        p=s.page(n); h=100 if n==1 else 0
        t=p[h]; leaf=t in (10,13); cnt=struct.unpack('>H',p[h+3:h+5])[0]
        ptr=h+(8 if leaf else 12)
        out=[]
        for i in range(cnt):
            at=struct.unpack('>H',p[ptr+2*i:ptr+2*i+2])[0]
            pos=at+(0 if leaf else 4)
            if t==5:
                _,k=varint(p,pos); out.append(bytes(p[at:pos+k])); continue
            pl,k=varint(p,pos); pos+=k
            if t==13:
                _,k=varint(p,pos); pos+=k
            assert pl <= s.usable-35 if t==13 else True
            out.append(bytes(p[at:pos+pl]))
        return t, out, (None if leaf else p[h+8:h+12])
    def rebuild(s,n,t,cells,right=None):
        p=bytearray(s.page(n)); h=100 if n==1 else 0
        leaf=t in (10,13); ptr=h+(8 if leaf else 12)
        end=s.usable; ptrs=[]
        for c in cells:
            end-=len(c); p[end:end+len(c)]=c; ptrs.append(end)
        assert end >= ptr+2*len(cells)
        p[h]=t; p[h+1:h+3]=b'\0\0'; p[h+3:h+5]=struct.pack('>H',len(cells))
        p[h+5:h+7]=struct.pack('>H',end if end<65536 else 0); p[h+7]=0
        if not leaf: p[h+8:h+12]=right
        for i,a in enumerate(ptrs): p[ptr+2*i:ptr+2*i+2]=struct.pack('>H',a)
        for i in range(ptr+2*len(cells), end): p[i]=0
        s.setpage(n,p)
def root(path,name):
    c=sqlite3.connect(path); r=c.execute("select rootpage from sqlite_schema where name=?",(name,)).fetchone()[0]; c.close(); return r
