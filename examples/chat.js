// A complete chat client for clientmq with the unmodified Phenix web SDK: authenticate, enter a
// room by its alias (creating it the first time), send messages and print every message of the
// room as it arrives.
//
//   cd examples && npm ci --ignore-scripts
//   node chat.js --uri ws://127.0.0.1:8080 --token TOKEN --room lobby --name alice --send 'hello'
//
// Options: --uri (the server's base uri; the SDK adds /ws), --token, --room (an alias), --name,
// --send TEXT (repeatable; without it, every line typed on stdin is sent), --until N (exit 0
// once N messages have been printed; 0: as soon as the --send messages are acknowledged;
// without it, run until Ctrl-C).
'use strict';

const sdk = require('phenix-web-sdk/dist/phenix-node-sdk.js');

function options(argv) {
    const out = {uri: 'ws://127.0.0.1:8080', token: '', room: 'lobby', name: 'guest', send: [], until: null};
    for (let i = 0; i < argv.length; i += 2) {
        const [flag, value] = [argv[i], argv[i + 1]];
        if (value === undefined) {
            throw new Error(`${flag} needs a value`);
        }
        switch (flag) {
        case '--uri': out.uri = value; break;
        case '--token': out.token = value; break;
        case '--room': out.room = value; break;
        case '--name': out.name = value; break;
        case '--send': out.send.push(value); break;
        case '--until': out.until = Number(value); break;
        default: throw new Error(`unknown option ${flag}`);
        }
    }
    return out;
}

// An SDK callback as a promise.
function call(what, start) {
    return new Promise((resolve, reject) => start((error, response) => {
        if (error) {
            reject(new Error(`${what}: ${JSON.stringify(error)}`));
        } else {
            resolve(response);
        }
    }));
}

async function main() {
    const opts = options(process.argv.slice(2));
    const pcast = new sdk.lowLevel.PCast({
        uri: opts.uri,
        disableConsoleLogging: true,
        disableMultiplePCastInstanceWarning: true,
        disableGlobalErrorListener: true
    });
    const sessionId = await new Promise((resolve, reject) => pcast.start(opts.token, (_, status, id) => {
        if (status === 'ok') {
            resolve(id);
        } else {
            reject(new Error(`authentication: ${status}`));
        }
    }, () => {}, () => {}));
    console.error(`authenticated as session ${sessionId}`);

    const rooms = new sdk.lowLevel.RoomService(pcast);
    rooms.start('Participant', opts.name);
    const room = {name: opts.room, description: `room ${opts.room}`, type: 'MultiPartyChat', alias: opts.room};
    const created = await call('create the room', (cb) => rooms.createRoom(room, cb));
    if (created.status !== 'ok' && created.status !== 'already-exists') {
        throw new Error(`create the room: ${created.status}`);
    }
    const entered = await call('enter the room', (cb) => rooms.enterRoom(null, opts.room, cb));
    if (entered.status !== 'ok') {
        throw new Error(`enter the room: ${entered.status}`);
    }
    console.error(`in room ${opts.room} (${entered.room.getRoomId()})`);

    const chat = rooms.getChatService();
    chat.start(20);
    let printed = 0;
    const done = () => {
        rooms.leaveRoom(() => {
            rooms.stop('done');
            pcast.stop('done');
            process.exit(0);
        }, false);
    };
    chat.getObservableChatMessages().subscribe((messages) => {
        for (const m of messages.slice(printed)) {
            console.log(`${m.from.screenName}: ${m.message}`);
        }
        printed = Math.max(printed, messages.length);
        if (opts.until > 0 && printed >= opts.until) {
            done();
        }
    });

    const send = (text) => call('send', (cb) => chat.sendMessageToRoom(text, cb)).then((response) => {
        if (response.status !== 'ok') {
            throw new Error(`send: ${response.status}`);
        }
    });
    if (opts.send.length > 0) {
        for (const text of opts.send) {
            await send(text);
        }
        if (opts.until === 0) {
            done();
        }
    } else {
        require('node:readline').createInterface({input: process.stdin}).on('line', (line) => {
            send(line).catch((e) => console.error(e.message));
        });
    }
}

main().catch((error) => {
    console.error(error.message);
    process.exit(1);
});
