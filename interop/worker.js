// A small clientmq worker in Node, written from docs/nats.md alone with the official NATS client
// (`nats`, nats.js 2.x). It proves the contract is enough to serve clients of clientmq gateways
// from another language; crates/server/tests/node_worker.rs drives it through a real gateway.
//
//   node worker.js [NATS_URL [PREFIX]]     (or CLIENTMQ_NATS, CLIENTMQ_NATS_PREFIX)
//
// Defaults: nats://127.0.0.1:4222 and the prefix `clientmq`. It serves, in queue group `demo`:
//
//   pcast.Authenticate  status `ok` and a session id (the same one again when the client resumes
//                       a session this worker issued). The gateway has checked the token already.
//   demo.Echo           the payload unchanged, as `demo.EchoResponse`.
//   demo.Notify         an event `demo.Note` to the requesting connection, then the answer.
//   demo.Join           subscribes the connection to the room named by the payload (UTF-8), waits
//                       for the gateway to acknowledge it (it then hears the room), then answers;
//                       the connection's last joined room is remembered.
//   demo.Shout          publishes the payload to that room as `demo.Shouted`, then answers.
//   demo.Ask            asks the requesting connection `demo.Question` (the payload), waits for
//                       its answer and answers with the client's payload, or with
//                       `mq.Error{reason}` where reason is the gateway's `Clientmq-Error`.
//   demo.Whoami         the request headers it got: `gateway G`, `connection C`, `session S`,
//                       `remote A` lines (what a worker learns about the client besides the
//                       payload), then `application A` and `claims C`: the `Clientmq-Application`
//                       and `Clientmq-Claims` headers of the connection's latest accepted
//                       pcast.Authenticate (empty unless it carried a verified EdgeAuth token).
//   demo.Stats          how many requests of each type it saw, `TYPE COUNT` lines, sorted.
//
// Two probes of the ordering docs/nats.md promises for everything a worker publishes under a
// gateway's subjects (crates/server/tests/node_worker.rs checks that the gateway keeps it):
//
//   demo.ReplyThenNotify  answers first, then publishes the `demo.Note` event.
//   demo.AskThenReply     sends `demo.Question` (the payload) without waiting, then answers.
//
// and forgets a connection's room and authentication headers when `P.disconnected` names it.
// Prints `@@worker ready` on stdout once its subscriptions are in place on the server; drains and
// exits 0 on SIGTERM/SIGINT. Everything else it prints goes to stderr.
//
// It keeps a little per-connection state (the joined room) but does not track gateways' liveness
// (docs/nats.md, "Liveness, loss and recovery"): a demo, not a production worker.
'use strict';

const crypto = require('node:crypto');
const { connect, headers, Match } = require('nats');

const URL = process.argv[2] || process.env.CLIENTMQ_NATS || 'nats://127.0.0.1:4222';
const PREFIX = process.argv[3] || process.env.CLIENTMQ_NATS_PREFIX || 'clientmq';
const QUEUE = 'demo';

const log = (...args) => console.error(...args);

// ---- protobuf, by hand: varints and length-delimited fields are all these messages use ----

function varint(n) {
    const out = [];
    let v = BigInt(n);
    do {
        let byte = Number(v & 0x7fn);
        v >>= 7n;
        if (v > 0n) byte |= 0x80;
        out.push(byte);
    } while (v > 0n);
    return out;
}

// Encodes string/bytes fields: `[[fieldNumber, string | Uint8Array], ...]`, in order.
function encode(fields) {
    const parts = [];
    for (const [number, value] of fields) {
        const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : Buffer.from(value);
        parts.push(Buffer.from(varint((number << 3) | 2)), Buffer.from(varint(bytes.length)), bytes);
    }
    return new Uint8Array(Buffer.concat(parts));
}

// Decodes a message into `Map<fieldNumber, value[]>`: varints as Numbers, length-delimited
// fields as Buffers; fixed-width fields are skipped. Throws on truncated input.
function decode(data) {
    const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    const fields = new Map();
    let i = 0;
    const readVarint = () => {
        let result = 0n;
        let shift = 0n;
        for (;;) {
            if (i >= buf.length) throw new Error('truncated varint');
            const b = buf[i++];
            result |= BigInt(b & 0x7f) << shift;
            if ((b & 0x80) === 0) return result;
            shift += 7n;
        }
    };
    while (i < buf.length) {
        const key = Number(readVarint());
        const number = key >>> 3;
        let value;
        switch (key & 7) {
            case 0: value = Number(readVarint()); break;
            case 1: i += 8; continue;
            case 2: {
                const len = Number(readVarint());
                if (i + len > buf.length) throw new Error('truncated field');
                value = buf.subarray(i, i + len);
                i += len;
                break;
            }
            case 5: i += 4; continue;
            default: throw new Error(`unsupported wire type ${key & 7}`);
        }
        if (!fields.has(number)) fields.set(number, []);
        fields.get(number).push(value);
    }
    return fields;
}

const str = (fields, number) => {
    const v = fields.get(number);
    return v && v.length ? v[v.length - 1].toString('utf8') : undefined;
};

// pcast.Authenticate: 6 connectionId, 7 sessionId, 10 connectionRouteKey (docs/PROTOCOL.md).
const decodeAuthenticate = (data) => {
    const f = decode(data);
    return { connectionId: str(f, 6), sessionId: str(f, 7), connectionRouteKey: str(f, 10) };
};
// pcast.AuthenticateResponse: 1 status, 2 sessionId.
const encodeAuthenticateResponse = (status, sessionId) =>
    encode(sessionId === undefined ? [[1, status]] : [[1, status], [2, sessionId]]);
// mq.Error: 1 reason.
const encodeError = (reason) => encode([[1, reason]]);
// pcast.ConnectionDisconnected: 1 connectionId.
const decodeDisconnected = (data) => ({ connectionId: str(decode(data), 1) });

// ---- the contract's names ----

// A room id as one subject token: itself when only letters, digits and `-`, else `_` + hex.
function roomToken(room) {
    if (/^[A-Za-z0-9-]+$/.test(room)) return room;
    return '_' + Buffer.from(room, 'utf8').toString('hex');
}

const subjects = {
    requests: `${PREFIX}.req.demo.>`,
    authenticate: `${PREFIX}.req.pcast.Authenticate`,
    disconnected: `${PREFIX}.disconnected`,
    event: (g) => `${PREFIX}.gw.${g}.event`,
    subscription: (g) => `${PREFIX}.gw.${g}.subscription`,
    request: (g) => `${PREFIX}.gw.${g}.request`,
    room: (r) => `${PREFIX}.room.${roomToken(r)}`,
};

// NATS header names are case-insensitive for the gateway, but nats.js matches them exactly
// unless asked otherwise.
const header = (msg, name) => (msg.headers ? msg.headers.get(name, Match.IgnoreCase) : '');

function hdrs(pairs) {
    const h = headers();
    for (const [name, value] of pairs) h.append(name, value);
    return h;
}

// ---- state ----

let nc; // the NATS connection, once made
let stopping = false;

const sessions = new Set();
const rooms = new Map(); // `${gateway} ${connection}` -> the room it last joined
const authentications = new Map(); // `${gateway} ${connection}` -> its latest Authenticate's claims headers
const seen = new Map(); // request type -> count

const connKey = (g, c) => `${g} ${c}`;

// ---- handlers: each gets the request message and its type, returns [type, payload] (or [] when
// it has answered itself) ----

// The `demo.Note` event to connection `c` of gateway `g`.
function notify(nc, g, c) {
    nc.publish(subjects.event(g), Buffer.from(`note for ${c}`), {
        headers: hdrs([['Clientmq-Connection', c], ['Clientmq-Type', 'demo.Note']]),
    });
}

async function handle(nc, msg, type) {
    const g = header(msg, 'Clientmq-Gateway');
    const c = header(msg, 'Clientmq-Connection');
    switch (type) {
        case 'pcast.Authenticate': {
            const auth = decodeAuthenticate(msg.data);
            if (auth.connectionRouteKey !== g || auth.connectionId !== c) {
                log(`authenticate: body says ${auth.connectionRouteKey}/${auth.connectionId}, headers ${g}/${c}`);
            }
            const resumed = auth.sessionId && sessions.has(auth.sessionId);
            const sessionId = resumed ? auth.sessionId : `demo-${crypto.randomBytes(12).toString('hex')}`;
            sessions.add(sessionId);
            // The gateway verified the token; an EdgeAuth token's claims come in these headers.
            authentications.set(connKey(g, c), {
                application: header(msg, 'Clientmq-Application'),
                claims: header(msg, 'Clientmq-Claims'),
            });
            return ['pcast.AuthenticateResponse', encodeAuthenticateResponse('ok', sessionId)];
        }
        case 'demo.Echo':
            return ['demo.EchoResponse', msg.data];
        case 'demo.Notify':
            // Effects before the reply: both go under P.gw.G., so the gateway applies them in order.
            notify(nc, g, c);
            return ['', msg.data];
        case 'demo.Join': {
            const room = Buffer.from(msg.data).toString('utf8');
            if (!room) return ['mq.Error', encodeError('no-room')];
            // With a reply subject, the gateway answers once it hears the room (its subscription
            // is in place at the server): a Shout right after this answer reaches the joiner.
            try {
                await nc.request(subjects.subscription(g), new Uint8Array(0), {
                    timeout: 1000,
                    headers: hdrs([['Clientmq-Connection', c], ['Clientmq-Subscribe', `room ${room}`]]),
                });
            } catch (err) {
                log(`subscription not acknowledged: ${err.message}`);
            }
            rooms.set(connKey(g, c), room);
            return ['', new Uint8Array(0)];
        }
        case 'demo.Shout': {
            const room = rooms.get(connKey(g, c));
            if (room === undefined) return ['mq.Error', encodeError('not-joined')];
            nc.publish(subjects.room(room), msg.data, { headers: hdrs([['Clientmq-Type', 'demo.Shouted']]) });
            return ['', new Uint8Array(0)];
        }
        case 'demo.Ask': {
            // Give up a little before the gateway does, so the client hears why.
            const budget = Number(header(msg, 'Clientmq-Timeout-Ms')) || 15000;
            let answer;
            try {
                answer = await nc.request(subjects.request(g), msg.data, {
                    timeout: Math.max(100, budget - 500),
                    headers: hdrs([['Clientmq-Connection', c], ['Clientmq-Type', 'demo.Question']]),
                });
            } catch (e) {
                // 503: no gateway G any more; TIMEOUT: nobody answered in time.
                log(`ask ${g}/${c}: ${e.code || e.message}`);
                return ['mq.Error', encodeError(e.code === '503' ? 'not-connected' : 'timeout')];
            }
            const error = header(answer, 'Clientmq-Error');
            if (error) {
                log(`ask ${g}/${c}: ${error}`);
                return ['mq.Error', encodeError(error)];
            }
            log(`ask ${g}/${c}: answered ${header(answer, 'Clientmq-Type')}`);
            return ['', answer.data];
        }
        case 'demo.ReplyThenNotify':
            msg.respond(msg.data);
            notify(nc, g, c);
            return [];
        case 'demo.AskThenReply':
            nc.request(subjects.request(g), msg.data, {
                timeout: Number(header(msg, 'Clientmq-Timeout-Ms')) || 15000,
                headers: hdrs([['Clientmq-Connection', c], ['Clientmq-Type', 'demo.Question']]),
            }).then(
                (answer) => {
                    const outcome = header(answer, 'Clientmq-Type') || header(answer, 'Clientmq-Error');
                    log(`ask-then-reply ${g}/${c}: ${outcome}`);
                },
                (e) => log(`ask-then-reply ${g}/${c}: ${e.code || e.message}`),
            );
            return ['', msg.data];
        case 'demo.Whoami': {
            const [session, remote] = [header(msg, 'Clientmq-Session'), header(msg, 'Clientmq-Remote')];
            const auth = authentications.get(connKey(g, c)) || { application: '', claims: '' };
            return ['', Buffer.from(`gateway ${g}\nconnection ${c}\nsession ${session}\nremote ${remote}\n`
                + `application ${auth.application}\nclaims ${auth.claims}\n`)];
        }
        case 'demo.Stats': {
            const lines = [...seen.entries()].sort(([a], [b]) => (a < b ? -1 : 1)).map(([t, n]) => `${t} ${n}\n`);
            return ['', Buffer.from(lines.join(''))];
        }
        default:
            return ['mq.Error', encodeError('unknown-type')];
    }
}

async function serveRequest(msg) {
    const type = msg.subject.slice(`${PREFIX}.req.`.length);
    seen.set(type, (seen.get(type) || 0) + 1);
    let replyType;
    let payload;
    try {
        const answer = await handle(nc, msg, type);
        if (answer.length === 0) return;
        [replyType, payload] = answer;
    } catch (e) {
        log(`${type}: ${e.stack || e}`);
        [replyType, payload] = ['mq.Error', encodeError('failed')];
    }
    // An empty Clientmq-Type means `<type>Response`; say it anyway where it is not the default.
    const h = replyType ? hdrs([['Clientmq-Type', replyType]]) : undefined;
    if (!msg.respond(payload, h ? { headers: h } : undefined)) log(`${type}: no reply subject`);
}

async function stop(signal) {
    if (stopping) return;
    stopping = true;
    log(`${signal}: draining`);
    // Unsubscribes first (new requests get no-worker at once), finishes what is in flight.
    if (nc) await nc.drain();
    process.exit(0);
}

async function main() {
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    nc = await connect({ servers: URL, name: `demo-worker-${process.pid}`, maxReconnectAttempts: -1 });
    const onRequest = (err, msg) => {
        if (err) return log(`subscription: ${err.message}`);
        serveRequest(msg);
    };
    nc.subscribe(subjects.authenticate, { queue: QUEUE, callback: onRequest });
    nc.subscribe(subjects.requests, { queue: QUEUE, callback: onRequest });
    nc.subscribe(subjects.disconnected, {
        queue: QUEUE,
        callback: (err, msg) => {
            if (err) return;
            const g = header(msg, 'Clientmq-Gateway');
            const c = header(msg, 'Clientmq-Connection') || decodeDisconnected(msg.data).connectionId;
            rooms.delete(connKey(g, c));
            authentications.delete(connKey(g, c));
        },
    });
    // A round trip to the server: once it returns, the server has our subscriptions and routes
    // requests to us.
    await nc.flush();
    console.log('@@worker ready');
    log(`serving ${subjects.authenticate} and ${subjects.requests} in queue group ${QUEUE} on ${URL}`);
    const closed = await nc.closed();
    if (!stopping) {
        log(`connection closed${closed ? `: ${closed.message}` : ''}`);
        process.exit(1);
    }
}

main().catch((e) => {
    log(e.stack || e);
    process.exit(1);
});
