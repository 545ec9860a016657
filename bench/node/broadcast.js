// The Node.js peer of `python -m bench websocket`: a bare broadcast server on the `ws` package.
//
//     node bench/node/broadcast.js PORT [HOST]
//
// The leanest fan-out a user could pick instead of CoreMQ: no history, no auth, no
// per-message ids. It speaks the part of CoreMQ's browser protocol (docs/websocket.md)
// that the benchmark uses, so that the same load generator drives it:
//
//   ?queues=a,b in the URL, or {"action":"subscribe","queues":[...],"ref":r}
//       -> {"type":"subscribed","queues":[...],"ref":r}
//   {"action":"publish","queue":q,"message":m,"ref":r}
//       -> {"type":"message","queue":q,"message":m} to every subscriber of q (encoded once),
//          then {"type":"published","queue":q,"ref":r} to the publisher
//   anything else -> {"type":"error","error":"...","ref":r}; the connection stays open.
//
// Prints "listening on HOST:PORT" once it accepts connections.
'use strict';

const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 0);
const host = process.argv[3] || '127.0.0.1';
const queues = new Map(); // queue name -> Set of sockets subscribed to it

function subscribe(socket, names) {
  for (const name of names) {
    let members = queues.get(name);
    if (members === undefined) {
      members = new Set();
      queues.set(name, members);
    }
    members.add(socket);
    socket.queues.add(name);
  }
}

function forget(socket) {
  for (const name of socket.queues) {
    const members = queues.get(name);
    members.delete(socket);
    if (members.size === 0) queues.delete(name);
  }
}

function names(value) {
  const list = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(list) || list.length === 0 || !list.every((n) => typeof n === 'string' && n !== '')) {
    return null;
  }
  return list;
}

function reply(socket, answer) {
  socket.send(JSON.stringify(answer));
}

function receive(socket, data, isBinary) {
  let request;
  try {
    request = JSON.parse(isBinary ? '' : data.toString());
  } catch (error) {
    reply(socket, { type: 'error', error: `invalid JSON: ${error.message}`, ref: null });
    return;
  }
  const ref = request !== null && typeof request === 'object' && 'ref' in request ? request.ref : null;
  const action = request !== null && typeof request === 'object' ? request.action : undefined;
  if (action === 'publish' && typeof request.queue === 'string' && request.queue !== '' && 'message' in request) {
    const members = queues.get(request.queue);
    if (members !== undefined) {
      const frame = Buffer.from(JSON.stringify({ type: 'message', queue: request.queue, message: request.message }));
      for (const member of members) {
        if (member.readyState === WebSocket.OPEN) member.send(frame, { binary: false });
      }
    }
    reply(socket, { type: 'published', queue: request.queue, ref });
  } else if (action === 'subscribe' && names(request.queues) !== null) {
    const list = names(request.queues);
    subscribe(socket, list);
    reply(socket, { type: 'subscribed', queues: list, ref });
  } else {
    reply(socket, { type: 'error', error: `unknown or malformed action: ${JSON.stringify(action)}`, ref });
  }
}

const server = new WebSocketServer({ host, port });

server.on('connection', (socket, request) => {
  socket.queues = new Set();
  socket.on('message', (data, isBinary) => receive(socket, data, isBinary));
  socket.on('close', () => forget(socket));
  socket.on('error', () => socket.terminate());
  const query = new URL(request.url, 'http://localhost').searchParams;
  const wanted = query.getAll('queues').flatMap((value) => value.split(',')).filter((name) => name !== '');
  if (wanted.length > 0) {
    subscribe(socket, wanted);
    reply(socket, { type: 'subscribed', queues: wanted, ref: null });
  }
});

server.on('listening', () => {
  const address = server.address();
  console.log(`listening on ${address.address}:${address.port}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    for (const socket of server.clients) socket.terminate();
    server.close(() => process.exit(0));
  });
}
