// The Node sender of TestHeaderBlocks (see pySender in
// headers_privileged_test.go for the protocol): POST /send?port=N&wait=F
// writes the raw request with net socket writes at the cut offsets, or with
// lib=1 sends it with http.request (its header lines set with setHeader) and
// answers with the bytes the library wrote to the socket.
'use strict';

const fs = require('fs');
const http = require('http');
const net = require('net');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// raw writes buf in pieces [0,cuts[0]) [cuts[0],cuts[1]) ... with 5 ms between.
async function raw(port, cuts, buf) {
  const s = net.connect({ host: '127.0.0.1', port });
  s.setNoDelay(true);
  await new Promise((r) => s.once('connect', r));
  let prev = 0;
  for (const c of [...cuts, buf.length]) {
    s.write(buf.subarray(prev, c));
    prev = c;
    await sleep(5);
  }
  const parts = [];
  s.on('data', (d) => parts.push(d));
  await new Promise((r) => s.once('close', r));
  return { status: Buffer.concat(parts).toString('latin1').split('\r\n')[0], sent: buf };
}

// lib sends the request of buf with http.request and records what it wrote.
function lib(port, buf) {
  const lines = buf.toString('latin1').split('\r\n');
  const [method, path] = lines[0].split(' ');
  const sent = [];
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1', port, method, path, setHost: false,
        createConnection: (opts, cb) => {
          const s = net.createConnection(opts, cb);
          const write = s.write;
          s.write = function (d, enc, ...rest) {
            sent.push(Buffer.from(d, typeof enc === 'string' ? enc : 'latin1'));
            return write.call(this, d, enc, ...rest);
          };
          return s;
        },
      },
      (res) => {
        res.resume();
        res.on('end', () => resolve({ status: `HTTP/1.1 ${res.statusCode} ${res.statusMessage}`, sent: Buffer.concat(sent) }));
      },
    );
    req.on('error', reject);
    for (const l of lines.slice(1)) {
      if (l === '') break;
      const i = l.indexOf(':');
      req.setHeader(l.slice(0, i), l.slice(i + 1).trimStart());
    }
    req.end();
  });
}

http.createServer((req, res) => {
  const q = new URL(req.url, 'http://x').searchParams;
  const parts = [];
  req.on('data', (d) => parts.push(d));
  req.on('end', async () => {
    const body = Buffer.concat(parts);
    const nl = body.indexOf(10);
    const cuts = body.subarray(0, nl).toString().split(',').filter((c) => c).map(Number);
    const buf = body.subarray(nl + 1);
    while (!fs.existsSync(q.get('wait'))) await sleep(5);
    const port = Number(q.get('port'));
    const out = await (q.get('lib') === '1' ? lib(port, buf) : raw(port, cuts, buf));
    const reply = Buffer.concat([Buffer.from(out.status + '\n', 'latin1'), out.sent]);
    res.writeHead(200, { 'Content-Length': reply.length });
    res.end(reply);
  });
}).listen(Number(process.argv[2]), '127.0.0.1', () => process.stdout.write('ready\n'));
