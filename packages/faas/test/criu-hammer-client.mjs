// A hostile-but-honest CRIU lazy-pages client for the page-server memory test, run as its own
// process (its reads must not count in the server's memory). argv[2]: JSON
// {port, conns, layout: 'v42'|'legacy', dstId, gets: [{vaddr, n}]}.
// Every connection sends all its GETs at once and reads nothing until a line "go" arrives on
// stdin; then it reads every answer, sends CLOSE, and the process prints one JSON line:
// [{replies: [{nrPages, vaddr}], sha256, closeAnswer}] per connection.
import { connect } from 'node:net';
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';

const cfg = JSON.parse(process.argv[2]);
const HS = cfg.layout === 'v42' ? 32 : 24;

function header(cmd, nrPages, vaddr, dstId) {
  const b = Buffer.alloc(HS);
  b.writeUInt32LE(cmd, 0);
  if (cfg.layout === 'v42') {
    b.writeBigUInt64LE(BigInt(nrPages), 8);
    b.writeBigUInt64LE(BigInt(vaddr), 16);
    b.writeBigUInt64LE(BigInt(dstId), 24);
  } else {
    b.writeUInt32LE(nrPages, 4);
    b.writeBigUInt64LE(BigInt(vaddr), 8);
    b.writeBigUInt64LE(BigInt(dstId), 16);
  }
  return b;
}

function run(sock) {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    const replies = [];
    let pending = Buffer.alloc(0);
    let dataLeft = 0;
    let closeAnswer;
    sock.on('error', reject);
    sock.on('close', () => resolve({ replies, sha256: hash.digest('hex'), closeAnswer }));
    sock.on('data', (d) => {
      let buf = pending.length ? Buffer.concat([pending, d]) : d;
      for (;;) {
        if (dataLeft > 0) {
          const take = Math.min(dataLeft, buf.length);
          hash.update(buf.subarray(0, take));
          dataLeft -= take;
          buf = buf.subarray(take);
          if (dataLeft > 0) break;
          if (replies.length === cfg.gets.length) sock.write(header(0x1023, 0, 0, 0));
          continue;
        }
        if (replies.length === cfg.gets.length) {
          if (buf.length >= 4) closeAnswer = buf.readInt32LE(0);
          buf = Buffer.alloc(0);
          break;
        }
        if (buf.length < HS) break;
        const nrPages = cfg.layout === 'v42' ? Number(buf.readBigUInt64LE(8)) : buf.readUInt32LE(4);
        const vaddr = Number(buf.readBigUInt64LE(cfg.layout === 'v42' ? 16 : 8));
        replies.push({ cmd: buf.readUInt32LE(0), nrPages, vaddr });
        dataLeft = nrPages * 4096;
        buf = buf.subarray(HS);
      }
      pending = Buffer.from(buf);
    });
  });
}

const socks = await Promise.all(
  Array.from({ length: cfg.conns }, () => new Promise((resolve, reject) => {
    const s = connect(cfg.port, '127.0.0.1');
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  })),
);
for (const s of socks) {
  s.pause();
  s.write(Buffer.concat(cfg.gets.map((g) => header(7, g.n, g.vaddr, cfg.dstId))));
}
process.stdout.write('sent\n');
const rl = createInterface({ input: process.stdin });
await new Promise((resolve) => rl.on('line', (l) => l.trim() === 'go' && resolve()));
rl.close();
const results = await Promise.all(socks.map((s) => {
  const r = run(s);
  s.resume();
  return r;
}));
process.stdout.write(JSON.stringify(results) + '\n');
