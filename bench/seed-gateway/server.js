// A Node WebSocket gateway of the seed's design, one process: clientmq's second benchmark peer.
//
// The seed kept three event-emitting layers, and so does this file:
//
// - Adapter: the WebSocket side. Per-socket state (encoding, heartbeat, close state), frame
//   decoding and encoding, and the Map of pending requests, each with its own 15 s timer.
// - ClientMQ: the registry of connections (connection id -> connection). It fills in what the
//   gateway knows before a request reaches the worker, and announces connections that end.
// - Worker: the open-connection counter and its limit, and the answers (the seed handed requests
//   to its MQ workers; here the worker answers them in process).
//
// One fix against the seed: the open counter is decremented exactly once per connection, on the
// one path every ending takes (the socket's `close` event), so the limit stays honest. See
// README.md for the paths and what they answer.
'use strict';

const crypto = require('node:crypto');
const {EventEmitter} = require('node:events');
const http = require('node:http');
const path = require('node:path');
const {parseArgs} = require('node:util');

const protobuf = require('protobufjs');
const {WebSocket, WebSocketServer} = require('ws');

const REQUEST_TIMEOUT_MS = 15000;
// Frames larger than this end the connection (ws closes it 1009); the seed's are tiny.
const MAX_FRAME_BYTES = 1024 * 1024;
const CLOSE = {
    limit: [1013, 'concurrency-limit-exceeded'],
    drain: [3333, 'drain'],
    timeout: [3334, 'timeout'],
    unexpected: [3335, 'unexpected-close'],
};

// ---------------------------------------------------------------------------------------------
// Command line and logging

function options(argv) {
    const {values} = parseArgs({
        args: argv,
        options: {
            listen: {type: 'string'},
            port: {type: 'string'},
            'max-connections': {type: 'string', default: '2000'},
            'heartbeat-secs': {type: 'string', default: '20'},
            'drain-deadline-secs': {type: 'string', default: '10'},
            help: {type: 'boolean', short: 'h', default: false},
        },
    });
    if (values.help) {
        console.log(
            'usage: node server.js [--listen HOST:PORT | --port PORT] [--max-connections N]\n' +
                '                      [--heartbeat-secs S] [--drain-deadline-secs S]',
        );
        process.exit(0);
    }
    let host = '127.0.0.1';
    let port = 8080;
    if (values.listen) {
        const at = values.listen.lastIndexOf(':');
        if (at < 0) usage(`--listen wants HOST:PORT, not ${values.listen}`);
        host = values.listen.slice(0, at).replace(/^\[|\]$/g, '');
        port = Number(values.listen.slice(at + 1));
    } else if (values.port) {
        port = Number(values.port);
    }
    const number = (name, min) => {
        const n = Number(values[name]);
        if (!Number.isFinite(n) || n < min) usage(`--${name} wants a number >= ${min}`);
        return n;
    };
    if (!Number.isInteger(port) || port < 0 || port > 65535) usage('bad port');
    return {
        host,
        port,
        maxConnections: number('max-connections', 0),
        heartbeatMs: number('heartbeat-secs', 0.001) * 1000,
        drainDeadlineMs: number('drain-deadline-secs', 0) * 1000,
    };
}

function usage(message) {
    console.error(`seed-gateway: ${message}`);
    process.exit(2);
}

// CLIENTMQ_LOG, as clientmq-server reads it (the benchmark sets `warn`).
const LEVELS = {error: 0, warn: 1, info: 2, debug: 3};
const LOG_LEVEL = LEVELS[process.env.CLIENTMQ_LOG] ?? LEVELS.info;

function log(level, message) {
    if (LEVELS[level] <= LOG_LEVEL) console.error(`seed-gateway ${level}: ${message}`);
}

// ---------------------------------------------------------------------------------------------
// Schema and wire helpers

const root = protobuf.loadSync([path.join(__dirname, 'mq.proto'), path.join(__dirname, 'pcast.proto')]);
const MqMessage = root.lookupType('mq.Message');
const MqError = root.lookupType('mq.Error');
const Authenticate = root.lookupType('pcast.Authenticate');
const AuthenticateResponse = root.lookupType('pcast.AuthenticateResponse');
const MessageType = MqMessage.getEnum('MessageType');

const BASE64 = 'base64';
const BINARY = 'binary';

function encode(type, message) {
    const bytes = type.encode(message).finish();
    // protobufjs writes Buffers under Node; a plain Uint8Array is wrapped without a copy.
    return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// Error payloads are the same bytes every time: encoded once.
const ERRORS = Object.fromEntries(
    ['timeout', 'failed', 'unsupported'].map((reason) => [reason, encode(MqError, {reason})]),
);

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

// 32 random alphanumerics. Bytes of 248 and over are skipped so every character is equally likely
// (248 = 4 * 62).
function randomId() {
    let id = '';
    while (id.length < 32) {
        for (const b of crypto.randomBytes(40)) {
            if (b < 248 && id.length < 32) id += ALPHABET[b % 62];
        }
    }
    return id;
}

// What the metrics page shows besides the open gauge; the seed traced these events.
const counters = {
    connectionsTotal: 0,
    rejected: 0,
    requests: 0,
    answered: 0,
    timeouts: 0,
    failed: 0,
    late: 0,
    dropped: {},
    heartbeatTimeouts: 0,
    pongs: 0,
    rttMs: 0,
    sendErrors: 0,
};

function dropped(reason) {
    counters.dropped[reason] = (counters.dropped[reason] || 0) + 1;
    log('debug', `frame dropped: ${reason}`);
}

// ---------------------------------------------------------------------------------------------
// Worker: the open counter, the limit, and the answers

class Worker extends EventEmitter {
    constructor(maxConnections) {
        super();
        this.maxConnections = maxConnections;
        this.open = 0;
        // connection id -> session id, for authenticated connections.
        this.sessions = new Map();
    }

    /** Counts a new connection in, or refuses it when the limit is reached. */
    admit() {
        if (this.open >= this.maxConnections) return false;
        this.open += 1;
        counters.connectionsTotal += 1;
        return true;
    }

    /** A connection admitted by `admit` ended. ClientMQ calls this once per connection. */
    disconnected(event) {
        this.open -= 1;
        this.sessions.delete(event.connectionId);
    }

    /** Answers one request: `{type, payload}` of the response. */
    async request({connectionId, type, payload}) {
        switch (type) {
            case 'mq.PingPong':
                // The benchmark's request: echoed without a session or any shared state.
                return {type: 'mq.PingPongResponse', payload};
            case 'pcast.Authenticate':
                return this.authenticate(connectionId, Authenticate.decode(payload));
            default:
                return {type: 'mq.Error', payload: ERRORS.unsupported};
        }
    }

    authenticate(connectionId, auth) {
        // No token check: like clientmq's --dev-accept-any-token. A known session is resumed.
        const sessionId = auth.sessionId || randomId();
        this.sessions.set(connectionId, sessionId);
        const payload = encode(AuthenticateResponse, {status: 'ok', sessionId});
        return {type: 'pcast.AuthenticateResponse', payload, sessionId};
    }
}

// ---------------------------------------------------------------------------------------------
// ClientMQ: the registry of connections

class ClientMQ extends EventEmitter {
    constructor(worker, routeKey) {
        super();
        this.worker = worker;
        this.routeKey = routeKey;
        /** connection id -> Connection */
        this.connections = new Map();
        this.on('disconnected', (event) => worker.disconnected(event));
    }

    add(connection) {
        this.connections.set(connection.id, connection);
    }

    /** Removes an ended connection and announces it (the seed's pcast.ConnectionDisconnected). */
    remove(connection, code, reason) {
        this.connections.delete(connection.id);
        this.emit('disconnected', {connectionId: connection.id, reasonCode: code, description: reason});
    }

    /** Hands a client request to the worker; resolves to `{type, payload}`. */
    request(connection, type, payload) {
        if (type === 'pcast.Authenticate') return this.authenticate(connection, payload);
        return this.worker.request({connectionId: connection.id, type, payload});
    }

    async authenticate(connection, payload) {
        // The gateway tells the worker who is asking, as the seed did.
        const auth = Authenticate.decode(payload);
        auth.connectionId = connection.id;
        auth.connectionRouteKey = this.routeKey;
        auth.remoteAddress = connection.remoteAddress;
        const reply = await this.worker.request({
            connectionId: connection.id,
            type: 'pcast.Authenticate',
            payload: encode(Authenticate, auth),
        });
        if (reply.sessionId) connection.sessionId = reply.sessionId;
        return reply;
    }
}

// ---------------------------------------------------------------------------------------------
// Adapter: sockets, per-socket state, pending requests, heartbeat, drain

/** Per-socket state. */
class Connection {
    constructor(id, ws, remoteAddress) {
        this.id = id;
        this.ws = ws;
        this.remoteAddress = remoteAddress;
        this.sessionId = null;
        // The encoding of the client's last frame; answers use it.
        this.encoding = BASE64;
        this.awaitingPong = false;
        this.pingSentAt = 0;
        // Set once the gateway started closing; frames that still arrive are dropped.
        this.closing = false;
        this.ended = false;
        // Fan-out rooms it subscribed to (benchmark only).
        this.rooms = null;
    }
}

// Listeners are shared by every socket (`this` is the socket) instead of closures per socket:
// an idle connection costs less memory.
const CONNECTION = Symbol('connection');

function onMessage(data, isBinary) {
    this[CONNECTION].adapter.frame(this[CONNECTION].connection, data, isBinary);
}

function onPong() {
    const {connection} = this[CONNECTION];
    if (!connection.awaitingPong) return; // unsolicited, or a late one: no round trip to time
    connection.awaitingPong = false;
    counters.rttMs += Date.now() - connection.pingSentAt;
    counters.pongs += 1;
}

function onClose(code, reason) {
    const {connection} = this[CONNECTION];
    for (const room of connection.rooms ?? []) rooms.get(room)?.delete(this);
    this[CONNECTION].adapter.ended(connection, code, reason.toString());
}

/** Fan-out rooms of the plain protocol: name -> Set of sockets. */
const rooms = new Map();

function onError(error) {
    // ws closes the socket after an error; `close` follows and ends the connection.
    log('debug', `socket error on ${this[CONNECTION].connection.id}: ${error.message}`);
}

class Adapter {
    constructor(clientMQ, worker, heartbeatMs) {
        this.clientMQ = clientMQ;
        this.worker = worker;
        this.heartbeatMs = heartbeatMs;
        /** gateway request id -> {connection, requestId, encoding, timer} */
        this.pending = new Map();
        this.nextRequest = 1;
        this.draining = false;
        this.onDrained = null;
        this.onTimeout = this.onTimeout.bind(this);
        this.heartbeat = setInterval(() => this.beat(), heartbeatMs);
    }

    /** A socket finished its upgrade on /ws. */
    connection(ws, req) {
        const forwarded = req.headers['x-forwarded-for'];
        const remoteAddress = forwarded ? forwarded.split(',')[0].trim() : req.socket.remoteAddress;
        if (!this.worker.admit()) {
            counters.rejected += 1;
            ws.on('error', () => {}); // it is going anyway; an unheard error would end the process
            ws.close(...CLOSE.limit);
            return;
        }
        const connection = new Connection(randomId(), ws, remoteAddress);
        ws[CONNECTION] = {adapter: this, connection};
        ws.on('message', onMessage);
        ws.on('pong', onPong);
        ws.on('close', onClose);
        ws.on('error', onError);
        this.clientMQ.add(connection);
        log('debug', `connected ${connection.id} from ${remoteAddress}`);
    }

    /** One text (base64) or binary frame from the client. */
    frame(connection, data, isBinary) {
        if (connection.closing || connection.ended) return dropped('not-open');
        // `sub:`/`pub:` (':' is no base64 letter, so no request starts like this).
        if (!isBinary && data.length > 4 && data[3] === 0x3a) return this.fanout(connection, data.toString());
        let message;
        try {
            const bytes = isBinary ? data : Buffer.from(data.toString('latin1'), 'base64');
            message = MqMessage.decode(bytes);
        } catch {
            return dropped('malformed');
        }
        connection.encoding = isBinary ? BINARY : BASE64;
        switch (message.messageType) {
            case MessageType.Request:
                return this.request(connection, message);
            case MessageType.Response:
                // The gateway sends no server requests, so no response is awaited.
                return dropped('unexpected-response');
            case MessageType.Event:
                return dropped('client-event');
            default:
                return dropped('unknown-message-type');
        }
    }

    /**
     * The fan-out benchmark's plain protocol (clientmq-load fanout --plain), broadcast the way
     * Node servers do it: `sub:ROOM` puts the socket in a room (echoed once done), `pub:ROOM:FRAME`
     * sends FRAME to every socket of the room in a loop over `ws` clients.
     */
    fanout(connection, text) {
        const [verb, rest] = [text.slice(0, 3), text.slice(4)];
        if (verb === 'sub') {
            let room = rooms.get(rest);
            if (!room) rooms.set(rest, (room = new Set()));
            room.add(connection.ws);
            (connection.rooms ??= []).push(rest);
            connection.ws.send(text);
        } else if (verb === 'pub') {
            const at = rest.indexOf(':');
            const room = rooms.get(rest.slice(0, at));
            if (!room) return;
            const frame = rest.slice(at + 1);
            for (const ws of room) ws.send(frame);
        } else {
            dropped('malformed');
        }
    }

    request(connection, message) {
        if (!message.requestId) return dropped('missing-request-id');
        counters.requests += 1;
        const key = this.nextRequest++;
        const timer = setTimeout(this.onTimeout, REQUEST_TIMEOUT_MS, key);
        const entry = {connection, requestId: message.requestId, encoding: connection.encoding, timer};
        this.pending.set(key, entry);
        this.clientMQ.request(connection, message.type, message.payload).then(
            (reply) => this.answer(key, reply.type, reply.payload),
            (error) => {
                counters.failed += 1;
                log('debug', `request ${message.type} failed: ${error.message}`);
                this.answer(key, 'mq.Error', ERRORS.failed);
            },
        );
    }

    /** The worker's answer to request `key`; dropped when the request already timed out. */
    answer(key, type, payload) {
        const entry = this.pending.get(key);
        if (entry === undefined) {
            counters.late += 1;
            return;
        }
        this.pending.delete(key);
        clearTimeout(entry.timer);
        counters.answered += 1;
        this.respond(entry, type, payload);
    }

    onTimeout(key) {
        const entry = this.pending.get(key);
        if (entry === undefined) return;
        this.pending.delete(key);
        counters.timeouts += 1;
        this.respond(entry, 'mq.Error', ERRORS.timeout);
    }

    respond({connection, requestId, encoding}, type, payload) {
        const message = {requestId, type, payload, messageType: MessageType.Response};
        this.send(connection, encode(MqMessage, message), encoding);
    }

    send(connection, bytes, encoding) {
        // A response ready after the connection closed is dropped.
        if (connection.closing || connection.ended) return dropped('response-to-closed');
        if (connection.ws.readyState !== WebSocket.OPEN) {
            counters.sendErrors += 1;
            return this.close(connection, CLOSE.unexpected);
        }
        connection.ws.send(encoding === BINARY ? bytes : bytes.toString('base64'));
    }

    /** Starts the gateway's close of `connection`; its end comes with the socket's `close`. */
    close(connection, [code, reason]) {
        if (connection.closing || connection.ended) return;
        connection.closing = true;
        connection.ws.close(code, reason);
    }

    /** Every way a connection ends comes here, once: ws emits `close` once per socket. */
    ended(connection, code, reason) {
        if (connection.ended) return;
        connection.ended = true;
        this.clientMQ.remove(connection, code, reason);
        log('debug', `disconnected ${connection.id} ${code} ${reason}`);
        if (this.draining && this.clientMQ.connections.size === 0) this.onDrained();
    }

    /** Heartbeat: a connection whose last ping got no pong is closed 3334; the others pinged. */
    beat() {
        const now = Date.now();
        for (const connection of this.clientMQ.connections.values()) {
            if (connection.closing) continue;
            if (connection.awaitingPong) {
                counters.heartbeatTimeouts += 1;
                this.close(connection, CLOSE.timeout);
                continue;
            }
            connection.awaitingPong = true;
            connection.pingSentAt = now;
            connection.ws.ping();
        }
    }

    /** Closes every connection with 3333 `drain`; `onDrained` runs when the last one ended. */
    drain(onDrained) {
        this.draining = true;
        this.onDrained = onDrained;
        clearInterval(this.heartbeat);
        if (this.clientMQ.connections.size === 0) return onDrained();
        for (const connection of this.clientMQ.connections.values()) this.close(connection, CLOSE.drain);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP: /ws, /metrics, /healthz

function metrics(worker, clientMQ, adapter) {
    const lines = [
        '# HELP clientmq_connections_open Open WebSocket connections (the worker\'s counter).',
        '# TYPE clientmq_connections_open gauge',
        `clientmq_connections_open ${worker.open}`,
        '# HELP clientmq_registry_connections Entries of the ClientMQ registry (equals the counter).',
        '# TYPE clientmq_registry_connections gauge',
        `clientmq_registry_connections ${clientMQ.connections.size}`,
        '# TYPE clientmq_connections_total counter',
        `clientmq_connections_total ${counters.connectionsTotal}`,
        '# TYPE clientmq_connections_rejected_total counter',
        `clientmq_connections_rejected_total{reason="concurrency-limit-exceeded"} ${counters.rejected}`,
        '# TYPE clientmq_requests_pending gauge',
        `clientmq_requests_pending ${adapter.pending.size}`,
        '# TYPE clientmq_requests_total counter',
        `clientmq_requests_total ${counters.requests}`,
        `clientmq_requests_answered_total ${counters.answered}`,
        `clientmq_requests_timeout_total ${counters.timeouts}`,
        `clientmq_requests_failed_total ${counters.failed}`,
        `clientmq_requests_late_total ${counters.late}`,
        '# TYPE clientmq_heartbeat_timeouts_total counter',
        `clientmq_heartbeat_timeouts_total ${counters.heartbeatTimeouts}`,
        '# TYPE clientmq_heartbeat_rtt_seconds summary',
        `clientmq_heartbeat_rtt_seconds_sum ${counters.rttMs / 1000}`,
        `clientmq_heartbeat_rtt_seconds_count ${counters.pongs}`,
        `clientmq_send_errors_total ${counters.sendErrors}`,
        '# TYPE clientmq_frames_dropped_total counter',
        ...Object.entries(counters.dropped).map(([r, n]) => `clientmq_frames_dropped_total{reason="${r}"} ${n}`),
    ];
    return lines.join('\n') + '\n';
}

function pathOf(url) {
    const q = url.indexOf('?');
    return q < 0 ? url : url.slice(0, q);
}

function refuseUpgrade(socket, status) {
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

function main() {
    const opts = options(process.argv.slice(2));
    const worker = new Worker(opts.maxConnections);
    const clientMQ = new ClientMQ(worker, `seed-gateway.${process.pid}`);
    const adapter = new Adapter(clientMQ, worker, opts.heartbeatMs);
    const wss = new WebSocketServer({
        noServer: true,
        clientTracking: false, // the ClientMQ registry is the list of connections
        perMessageDeflate: false,
        maxPayload: MAX_FRAME_BYTES,
    });

    const server = http.createServer({noDelay: true}, (req, res) => {
        const route = pathOf(req.url);
        if (req.method === 'GET' && route === '/metrics') {
            res.writeHead(200, {'Content-Type': 'text/plain; version=0.0.4'});
            res.end(metrics(worker, clientMQ, adapter));
        } else if (req.method === 'GET' && route === '/healthz') {
            res.writeHead(200, {'Content-Type': 'text/plain'});
            res.end('ok\n');
        } else {
            res.writeHead(404, {'Content-Type': 'text/plain'});
            res.end('not found\n');
        }
    });
    server.on('upgrade', (req, socket, head) => {
        if (pathOf(req.url) !== '/ws') return refuseUpgrade(socket, 404);
        if (adapter.draining) return refuseUpgrade(socket, 503);
        wss.handleUpgrade(req, socket, head, (ws) => adapter.connection(ws, req));
    });
    server.on('clientError', (error, socket) => socket.destroy());

    let stopping = false;
    const stop = (signal) => {
        if (stopping) {
            log('warn', `${signal} again: exiting with ${clientMQ.connections.size} connections open`);
            process.exit(1);
        }
        stopping = true;
        log('info', `${signal}: draining ${clientMQ.connections.size} connections`);
        server.close(); // stop accepting
        const deadline = setTimeout(() => {
            log('warn', `drain deadline: exiting with ${clientMQ.connections.size} connections open`);
            process.exit(0);
        }, opts.drainDeadlineMs);
        adapter.drain(() => {
            clearTimeout(deadline);
            log('info', 'drained');
            process.exit(0);
        });
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));

    server.listen(opts.port, opts.host, () => {
        const {address, port} = server.address();
        log(
            'info',
            `listening on ws://${address}:${port}/ws (max ${opts.maxConnections} connections, ` +
                `heartbeat ${opts.heartbeatMs / 1000} s)`,
        );
    });
}

main();
