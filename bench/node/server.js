'use strict';

// The Node.js peer wsidecar is benchmarked against (go run ./bench): the
// classic broadcast server from the ws README ("Server broadcast"), plus the
// two things a benchmark needs and the README example lacks:
//
//   POST /broadcast  sends the request body, as one text message, to every
//                    open client of the broadcast server — the same loop as
//                    the README's message handler — so the runner can trigger
//                    a fan-out the way it calls wsidecar's push API;
//   ws://…/echo      echoes each message back to its sender: the Node
//                    equivalent of wsidecar's webhook round trip (there is no
//                    backend hop here, which favours Node).
//
// Both WebSocket servers share one HTTP server (the README's "Multiple servers
// sharing a single HTTP/S server" pattern). Everything else is ws's defaults
// (permessage-deflate off). Listens on 127.0.0.1:$PORT and prints
// "listening <port>" once it accepts connections.

const http = require('http');
const { WebSocket, WebSocketServer } = require('ws');

const wss = new WebSocketServer({ noServer: true });
const echo = new WebSocketServer({ noServer: true });

// The README's broadcast server, unchanged.
wss.on('connection', function connection(ws) {
  ws.on('error', console.error);

  ws.on('message', function message(data, isBinary) {
    wss.clients.forEach(function each(client) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

echo.on('connection', function connection(ws) {
  ws.on('error', console.error);
  ws.on('message', function message(data, isBinary) {
    ws.send(data, { binary: isBinary });
  });
});

const server = http.createServer(function (req, res) {
  if (req.method === 'POST' && req.url === '/broadcast') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      const data = Buffer.concat(chunks);
      let delivered = 0;
      // Same loop as the message handler above.
      wss.clients.forEach(function each(client) {
        if (client.readyState === WebSocket.OPEN) {
          client.send(data, { binary: false });
          delivered++;
        }
      });
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify({ delivered: delivered, dropped: 0 }) + '\n');
    });
    return;
  }
  if (req.url === '/healthz') {
    res.writeHead(200, { 'Content-Type': 'text/plain' });
    res.end('ok\n');
    return;
  }
  res.writeHead(404);
  res.end();
});

server.on('upgrade', function upgrade(request, socket, head) {
  const target = request.url === '/echo' ? echo : wss;
  target.handleUpgrade(request, socket, head, function done(ws) {
    target.emit('connection', ws, request);
  });
});

const port = Number(process.env.PORT || 8080);
// The accept backlog matches what Go's listener gets (net.core.somaxconn),
// so a burst of handshakes meets the same queue on both peers.
server.listen({ port: port, host: '127.0.0.1', backlog: 4096 }, function () {
  console.log('listening ' + server.address().port);
});

process.on('SIGTERM', () => process.exit(0));
