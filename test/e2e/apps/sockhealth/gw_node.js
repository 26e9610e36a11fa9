// Gateway for the socket-health tests: forwards every request to the
// backend on 127.0.0.1 through a keep-alive Agent (plain http module).
//
// Usage: node gw_node.js <port> <backend port>
'use strict';
const http = require('http');

const port = Number(process.argv[2]);
const backendPort = Number(process.argv[3]);
const agent = new http.Agent({ keepAlive: true, maxSockets: 16, maxFreeSockets: 16 });

http.createServer((req, res) => {
  const headers = { ...req.headers, host: `127.0.0.1:${backendPort}` };
  delete headers.connection;
  const up = http.request(
    { host: '127.0.0.1', port: backendPort, method: req.method, path: req.url, headers, agent },
    (ur) => {
      const h = { 'content-type': ur.headers['content-type'] || 'application/octet-stream' };
      if (ur.headers['content-length'] !== undefined) h['content-length'] = ur.headers['content-length'];
      res.writeHead(ur.statusCode, h);
      ur.pipe(res);
    },
  );
  up.on('error', (err) => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
    res.end(`gateway: ${err}`);
  });
  req.pipe(up);
}).listen(port, '127.0.0.1', () => console.log('ready'));
