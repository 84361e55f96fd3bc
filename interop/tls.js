// The unmodified Phenix web SDK over wss:// against a clientmq-server serving TLS (run by
// crates/server/tests/tls.rs, which makes the certificate and trusts it with
// NODE_EXTRA_CA_CERTS). Environment: CLIENTMQ_PORT, CLIENTMQ_TOKEN.
'use strict';

const assert = require('node:assert/strict');
const https = require('node:https');

const {Client, call, fail, step, waitFor} = require('./sdk.js');

const PORT = Number(process.env.CLIENTMQ_PORT);
const TOKEN = process.env.CLIENTMQ_TOKEN;
setTimeout(() => fail(new Error('watchdog: the TLS harness ran longer than 30 s')), 30000).unref();

function get(path) {
    return new Promise((resolve, reject) => {
        https.get({host: '127.0.0.1', port: PORT, path}, (res) => {
            let body = '';
            res.on('data', (chunk) => {
                body += chunk;
            });
            res.on('end', () => resolve({status: res.statusCode, body}));
        }).on('error', reject);
    });
}

async function main() {
    const health = await get('/healthz');
    assert.equal(health.status, 200);
    step('https:// answers /healthz on the same port');

    const alice = new Client('alice', PORT, TOKEN, 'wss');
    const bob = new Client('bob', PORT, TOKEN, 'wss');
    await alice.start();
    await bob.start();
    step('two SDK clients authenticate over wss://');

    const created = await call('alice creates a room', (cb) => alice.rooms.createRoom({
        name: 'TLS room', description: 'over wss', type: 'MultiPartyChat', alias: `tls-${process.pid}`
    }, cb));
    const roomId = created.room.getRoomId();
    await alice.enter(roomId, null);
    await bob.enter(roomId, null);
    alice.rooms.getChatService().start(10);
    bob.rooms.getChatService().start(10);
    await waitFor('bob to see alice', () => bob.memberIds().length === 2);
    await alice.send('hello over TLS');
    await waitFor('bob to receive it', () => bob.messages().includes('alice: hello over TLS'));
    step('rooms and chat work over wss://');

    await bob.stop();
    await alice.stop();
    const metrics = await get('/metrics');
    assert.match(metrics.body, /clientmq_connections_open 0/);
    assert.match(metrics.body, /clientmq_tls_handshakes_failed_total [1-9]/, 'the plain HTTP attempt was counted');
    step('both stop cleanly; the plain HTTP attempt was counted');
}

main().then(() => {
    console.log('ok - tls harness passed');
    process.exit(0);
}, fail);
