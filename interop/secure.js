// Drives the unmodified Phenix web SDK against two clientmq gateways and one clientmq-chat worker
// on a NATS server that requires TLS and authenticates every process, with the least-privilege
// permissions of docs/nats.md. Run by crates/server/tests/nats_secure.rs.
//
// Environment: CLIENTMQ_GW1_PORT, CLIENTMQ_GW2_PORT, CLIENTMQ_TOKEN.
'use strict';

const assert = require('node:assert/strict');

const {Client, fail, gauge, step, waitFor} = require('./sdk.js');

const GW1 = Number(process.env.CLIENTMQ_GW1_PORT);
const GW2 = Number(process.env.CLIENTMQ_GW2_PORT);
const TOKEN = process.env.CLIENTMQ_TOKEN;
const WATCHDOG_MS = 60000;

assert.ok(GW1 > 0 && GW2 > 0 && TOKEN, 'the test sets the environment');
setTimeout(() => fail(new Error(`watchdog: the harness ran longer than ${WATCHDOG_MS} ms`)), WATCHDOG_MS).unref();

async function main() {
    const alice = new Client('alice', GW1, TOKEN);
    const bob = new Client('bob', GW2, TOKEN);
    await alice.start();
    await bob.start();
    step('two SDK clients authenticate through two gateways');

    const alias = `secure-${process.pid}`;
    await alice.enter(await alice.createRoom('Secure room', alias), null);
    await bob.enter(null, alias);
    const both = [alice.sessionId, bob.sessionId].sort();
    for (const client of [alice, bob]) {
        await waitFor(`${client.name} to see both members`, () => client.memberIds().join() === both.join());
        client.rooms.getChatService().start(50);
    }
    step('both enter one room, by id and by alias, through two gateways');

    await waitFor('chat subscriptions on both gateways', async () =>
        (await gauge(GW1, 'clientmq_subscriptions')) === 2 && (await gauge(GW2, 'clientmq_subscriptions')) === 2);
    const sent = [];
    for (const [from, text] of [[alice, 'hello from alice'], [bob, 'hello from bob'], [alice, 'bye']]) {
        await from.send(text);
        sent.push(`${from.name}: ${text}`);
    }
    for (const client of [alice, bob]) {
        await waitFor(`${client.name} to receive every message`, () => client.messages().length >= sent.length);
        assert.deepEqual(client.messages(), sent, `${client.name} sees every message once, in order`);
    }
    step('chat goes both ways between the gateways, in order');

    await bob.stop();
    await alice.stop();
    step('both stop cleanly');
}

main().then(() => {
    console.log('ok - secure fleet harness passed');
    process.exit(0);
}, fail);
