// What the interop harnesses share: the unmodified Phenix web SDK (Node build), a client that
// wraps its PCast and RoomService, and small helpers (waiting with deadlines, SDK callbacks as
// promises, the server's /metrics). Requires `npm ci --ignore-scripts` in this folder.
'use strict';

const assert = require('node:assert/strict');
const http = require('node:http');
const readline = require('node:readline');

const SDK_LOGS = process.env.INTEROP_SDK_LOGS === '1';
const WAIT_MS = 10000;

function fail(error) {
    console.error('not ok - interop harness failed:', error && error.stack ? error.stack : error);
    process.exit(1);
}

process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);

const sdk = require('phenix-web-sdk/dist/phenix-node-sdk.js');

// The SDK's Node build installs its bundled `ws` as global.WebSocket and creates every socket with
// `new WebSocket(uri)`. Subclassing it (without changing its behaviour) lets a harness see the
// close codes each client receives. Sockets made while `owner` is set are attributed to it.
const SdkWebSocket = global.WebSocket;
const sockets = [];
let owner = null;
global.WebSocket = class ObservedWebSocket extends SdkWebSocket {
    constructor(...args) {
        super(...args);
        const record = {owner, closeCode: null, ws: this};
        sockets.push(record);
        // A raw emitter listener: the bundled ws 7 drops every addEventListener listener when
        // the SDK assigns `onclose`.
        this.on('close', (code) => {
            record.closeCode = code;
        });
    }
};

function step(name) {
    console.log(`ok - ${name}`);
}

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

async function waitFor(what, condition, timeoutMs = WAIT_MS) {
    const deadline = Date.now() + timeoutMs;

    for (;;) {
        const value = await condition();

        if (value) {
            return value;
        }

        if (Date.now() > deadline) {
            throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
        }

        await sleep(25);
    }
}

// Wraps an SDK callback API in a promise with a timeout.
function call(what, start, timeoutMs = WAIT_MS) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${what}`)), timeoutMs);

        start((error, response) => {
            clearTimeout(timer);

            if (error) {
                reject(new Error(`${what} failed: ${JSON.stringify(error)}`));
            } else {
                resolve(response);
            }
        });
    });
}

function metrics(port) {
    return new Promise((resolve) => {
        const req = http.get({host: '127.0.0.1', port, path: '/metrics', timeout: 2000}, (res) => {
            let body = '';
            res.on('data', (chunk) => {
                body += chunk;
            });
            res.on('end', () => resolve(body));
        });
        req.on('error', () => resolve(''));
        req.on('timeout', () => req.destroy());
    });
}

// A series of a server's /metrics; NaN when it is not there.
async function gauge(port, name) {
    const line = (await metrics(port)).split('\n').find((l) => l.startsWith(`${name} `));

    return line === undefined ? NaN : Number(line.split(' ')[1]);
}

// Prints `@@clientmq <what>` for the test that runs the harness and waits for its answer line.
function ask(what, answer, timeoutMs) {
    const lines = readline.createInterface({input: process.stdin});

    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no "${answer}" on stdin in time after ${what}`)), timeoutMs);

        lines.on('line', (line) => {
            if (line.trim() === answer) {
                clearTimeout(timer);
                lines.close();
                resolve();
            }
        });
        console.log(`@@clientmq ${what}`);
    });
}

class Client {
    // `scheme` 'wss' connects over TLS (the certificate must be trusted: NODE_EXTRA_CA_CERTS).
    constructor(name, port, token, scheme = 'ws') {
        this.name = name;
        this.token = token;
        this.pcast = new sdk.lowLevel.PCast({
            uri: `${scheme}://127.0.0.1:${port}`,
            disableConsoleLogging: !SDK_LOGS,
            disableMultiplePCastInstanceWarning: true,
            disableGlobalErrorListener: true
        });
    }

    // Starts the SDK and waits for its first authentication: `{status, sessionId}` as the SDK's
    // authentication callback reports them (any refusal is `unauthorized` there).
    async authenticate() {
        const authenticated = new Promise((resolve) => {
            owner = this.name;

            try {
                this.pcast.start(this.token, (pcast, status, sessionId) => resolve({status, sessionId}), () => {}, () => {});
            } finally {
                owner = null;
            }
        });
        return waitFor(`${this.name} to authenticate`, () => Promise.race([
            authenticated,
            new Promise((resolve) => setTimeout(() => resolve(null), 100))
        ]));
    }

    async start() {
        const {status, sessionId} = await this.authenticate();

        assert.equal(status, 'ok', `${this.name} authenticates`);
        assert.ok(sessionId, `${this.name} gets a session id`);
        this.sessionId = sessionId;
        this.rooms = new sdk.lowLevel.RoomService(this.pcast);
        this.rooms.start('Participant', this.name);
    }

    ownSockets() {
        return sockets.filter((s) => s.owner === this.name);
    }

    online() {
        return this.pcast.getStatus() === 'online';
    }

    currentSessionId() {
        return this.pcast.getProtocol().getSessionId();
    }

    memberIds() {
        const room = this.rooms.getObservableActiveRoom().getValue();

        return room ? room.getObservableMembers().getValue().map((m) => m.getSessionId()).sort() : [];
    }

    // Creates a chat room reachable by `alias`; returns its id.
    async createRoom(name, alias) {
        const created = await call(`${this.name} creates ${name}`, (cb) => this.rooms.createRoom({
            name, description: name, type: 'MultiPartyChat', alias
        }, cb));
        assert.equal(created.status, 'ok', `${this.name} creates ${name}`);
        return created.room.getRoomId();
    }

    async enter(roomId, alias) {
        const response = await call(`${this.name} enters the room`, (cb) => this.rooms.enterRoom(roomId, alias, cb));

        assert.equal(response.status, 'ok', `${this.name} enters the room`);

        return response.room;
    }

    async send(text) {
        const response = await call(`${this.name} sends`, (cb) => this.rooms.getChatService().sendMessageToRoom(text, cb));
        assert.equal(response.status, 'ok', `${this.name} sends ${text}`);
    }

    messages() {
        return this.rooms.getChatService().getObservableChatMessages().getValue()
            .map((m) => `${m.from.screenName}: ${m.message}`);
    }

    // Ends the session with pcast.Bye, through the SDK's protocol object (its stop() only closes
    // the socket); the socket stays open.
    async bye() {
        const response = await call(`${this.name} says bye`, (cb) => this.pcast.getProtocol().bye('done', cb));
        assert.equal(response.status, 'ok', `${this.name} says bye`);
    }

    // Reconnect sockets cannot be attributed to a client, so stop one client at a time: exactly
    // one socket that was open must close, with 1000 byebye. With `leave` false, a room it is
    // in is not left first.
    async stop(leave = true) {
        if (leave && this.rooms && this.rooms.isInRoom()) {
            await call(`${this.name} leaves on stop`, (cb) => this.rooms.leaveRoom(cb, false));
        }

        const open = sockets.filter((s) => s.closeCode === null);

        if (this.rooms) {
            this.rooms.stop('done');
        }

        this.pcast.stop('done');
        await waitFor(`${this.name}'s socket to close`, () => open.some((s) => s.closeCode !== null));
        await sleep(50);
        const closed = open.filter((s) => s.closeCode !== null).map((s) => s.closeCode);
        assert.deepEqual(closed, [1000], `${this.name} closes its one socket with 1000 byebye`);
    }
}

// Everyone sends a round, then everyone must see every message so far, once, in order.
async function chatRound(clients, sent, round) {
    for (const client of clients) {
        const text = `round ${round} from ${client.name}`;
        await client.send(text);
        sent.push(`${client.name}: ${text}`);
    }

    for (const client of clients) {
        await waitFor(`${client.name} to receive round ${round}`, () => client.messages().length >= sent.length);
        assert.deepEqual(client.messages(), sent, `${client.name} sees every message once, in order`);
    }
}

module.exports = {Client, WAIT_MS, ask, call, chatRound, fail, gauge, metrics, sleep, sockets, step, waitFor};
