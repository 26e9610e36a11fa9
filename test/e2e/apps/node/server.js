// End-to-end test app: Node.js standard library HTTP/1.1 server.
//
// Usage: node server.js <port>   (or PORT in the environment)
//
// One event loop (Node has no thread per request), keep-alive on, outbound
// calls with http.request, each on a new connection (agent: false). Endpoints
// are the same in every language; see test/e2e/doc.go. BIND_HOST sets the
// listening address (127.0.0.1); TLS_CERT and TLS_KEY (PEM files) serve
// HTTPS, and outgoing https calls accept any certificate.
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');

function sha256(buf) {
  return crypto.createHash('sha256').update(buf).digest('hex');
}

// The first n bytes of 0123456789 repeated: /call's pad and body.
function pattern(n) {
  return n > 0 ? Buffer.alloc(n, '0123456789') : Buffer.alloc(0);
}

function headersDigest(rawHeaders) {
  const lines = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    lines.push(`${rawHeaders[i].toLowerCase()}: ${rawHeaders[i + 1]}\n`);
  }
  lines.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return sha256(Buffer.from(lines.join(''), 'utf8'));
}

function handle(req, res) {
  // The first traceparent field and how many there were (req.headers would
  // join repeated ones with ", ").
  let traceparent = '';
  let traceparentCount = 0;
  for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i].toLowerCase() === 'traceparent') {
      if (traceparentCount === 0) {
        traceparent = req.rawHeaders[i + 1];
      }
      traceparentCount++;
    }
  }
  const url = new URL(req.url, 'http://localhost');

  const reply = (code, body, contentType) => {
    const headers = { 'X-Received-Traceparent': traceparent };
    const buf = Buffer.from(body || '', 'utf8');
    if (code !== 204 && code !== 304) {
      headers['Content-Type'] = contentType || 'text/plain';
      headers['Content-Length'] = buf.length;
    }
    res.writeHead(code, headers);
    res.end(code !== 204 && code !== 304 ? buf : undefined);
  };
  const replyJSON = (code, obj) => {
    obj.traceparent = traceparent;
    obj.traceparent_count = traceparentCount;
    reply(code, JSON.stringify(obj), 'application/json');
  };

  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    if (req.method === 'GET' && url.pathname === '/hello') {
      reply(200, 'hello');
    } else if (req.method === 'GET' && url.pathname.startsWith('/status/')) {
      const code = Number.parseInt(url.pathname.slice('/status/'.length), 10);
      if (code >= 200 && code <= 599) {
        reply(code);
      } else {
        reply(400, 'bad status code');
      }
    } else if (req.method === 'GET' && url.pathname === '/call') {
      const target = url.searchParams.get('url');
      if (!target) {
        reply(400, 'missing url');
        return;
      }
      const headers = {}; // X-Pad before traceparent: an own traceparent after a large header
      const pad = Number.parseInt(url.searchParams.get('pad') || '0', 10);
      if (pad > 0) {
        headers['X-Pad'] = pattern(pad).toString('ascii');
      }
      const tp = url.searchParams.get('traceparent');
      if (tp) {
        headers['traceparent'] = tp;
      }
      const ts = url.searchParams.get('tracestate');
      if (ts) {
        headers['tracestate'] = ts;
      }
      const method = url.searchParams.get('method') || 'GET';
      let payload;
      if (method === 'POST') {
        payload = pattern(Number.parseInt(url.searchParams.get('body') || '0', 10));
        headers['Content-Type'] = 'application/octet-stream';
        headers['Content-Length'] = payload.length;
      }
      const call = () => {
        const out = http.request(target, { method, headers, agent: false, timeout: 10000 }, (down) => {
          const parts = [];
          down.on('data', (c) => parts.push(c));
          down.on('end', () => {
            replyJSON(200, { status: down.statusCode, body: Buffer.concat(parts).toString('utf8') });
          });
        });
        out.on('timeout', () => out.destroy(new Error('timeout')));
        out.on('error', (err) => replyJSON(502, { error: String(err) }));
        out.end(payload);
      };
      // delay=<ms>: the call is made later, from a timer callback, while
      // the event loop serves other requests.
      const delay = Number.parseInt(url.searchParams.get('delay') || '0', 10);
      if (delay > 0) {
        setTimeout(call, delay);
      } else {
        call();
      }
    } else if (req.method === 'GET' && url.pathname === '/headers') {
      const merged = {};
      for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) {
        const key = req.rawHeaders[i].toLowerCase();
        const value = req.rawHeaders[i + 1];
        merged[key] = key in merged ? `${merged[key]}, ${value}` : value;
      }
      replyJSON(200, { headers: merged, sha256: headersDigest(req.rawHeaders) });
    } else if (req.method === 'POST' && url.pathname === '/echo') {
      replyJSON(200, { len: body.length, sha256: sha256(body) });
    } else if (req.method === 'POST' && url.pathname === '/mirror') {
      res.writeHead(200, { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length });
      res.end(body);
    } else if (req.method === 'POST' && url.pathname === '/relay') {
      relay(url, body, res);
    } else {
      reply(404, 'not found');
    }
  });
}

// POST /relay?url=U[&n=N]: POSTs the body to U N times (default 1), one
// after the other on one keep-alive connection, and answers with the last
// response's body, byte for byte.
function relay(url, body, res) {
  const target = new URL(url.searchParams.get('url'));
  const n = Number.parseInt(url.searchParams.get('n') || '1', 10);
  const mod = target.protocol === 'https:' ? https : http;
  const agent = new mod.Agent({ keepAlive: true, maxSockets: 1 });
  const fail = (err) => {
    agent.destroy();
    res.writeHead(502, { 'Content-Type': 'text/plain' });
    res.end(String(err));
  };
  const one = (left) => {
    const out = mod.request(target, {
      method: 'POST', agent, rejectUnauthorized: false, timeout: 10000,
      headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': body.length },
    }, (down) => {
      const parts = [];
      down.on('data', (c) => parts.push(c));
      down.on('end', () => {
        if (left > 1) {
          one(left - 1);
          return;
        }
        agent.destroy();
        const got = Buffer.concat(parts);
        res.writeHead(down.statusCode === 200 ? 200 : 502,
          { 'Content-Type': 'application/octet-stream', 'Content-Length': got.length });
        res.end(got);
      });
    });
    out.on('timeout', () => out.destroy(new Error('timeout')));
    out.on('error', fail);
    out.end(body);
  };
  one(n);
}

const port = Number.parseInt(process.argv[2] || process.env.PORT, 10);
const server = process.env.TLS_CERT
  ? https.createServer({ cert: fs.readFileSync(process.env.TLS_CERT), key: fs.readFileSync(process.env.TLS_KEY) }, handle)
  : http.createServer(handle);
server.keepAliveTimeout = 30000;
server.listen({ host: process.env.BIND_HOST || '127.0.0.1', port, backlog: 1024 }, () => {
  process.stdout.write('ready\n');
});
