'use strict';
// Node.js peer of the tutti benchmark: an HTTP fan-out gateway written the
// way a Node service usually is, with the http and http2 core modules,
// Promise.all and an AbortController per request. No npm packages.
//
// Usage: node gateway.js --config FILE
//
// FILE is the bench config shared by every gateway of the benchmark:
//   {"port": 9480, "workers": 1, "deadline_ms": 1000,
//    "calls": [{"name": "c0", "url": "http://127.0.0.1:9301/item.json"},
//              {"name": "c1", "url": "h2c://127.0.0.1:9311/item.json"}]}
//
// GET /fan calls every URL at once and responds with 200 and
// {"c0": <body>, ...}.
// The first failed call ends the request with 502 {"error": {"call",
// "kind", "status"}} and aborts the other calls. When deadline_ms passes
// first, the answer is 504 {"error": {"kind": "deadline"}}. With workers > 1
// the cluster module runs that many worker processes on one port.

const cluster = require('node:cluster');
const events = require('node:events');
const fs = require('node:fs');
const http = require('node:http');
const http2 = require('node:http2');

const DEADLINE = Symbol('deadline');

// CallError is the failure of one call, sent as a 502 body.
class CallError extends Error {
    constructor(call, kind, status) {
        super(`call ${call} failed: ${kind}`);
        this.call = call;
        this.kind = kind; // "connect", "status" or "bad_response"
        this.status = status; // the downstream status for kind "status"
    }
}

function parseArgs(argv) {
    const index = argv.indexOf('--config');
    if (index < 0 || index + 1 >= argv.length) {
        console.error('node-gateway: missing --config FILE');
        process.exit(2);
    }
    return argv[index + 1];
}

// Reads and checks the bench config; exits with status 2 when it is invalid.
function loadConfig(path) {
    let config;
    try {
        config = JSON.parse(fs.readFileSync(path, 'utf8'));
    } catch (err) {
        console.error(`node-gateway: invalid config ${path}: ${err.message}`);
        process.exit(2);
    }
    const workers = config.workers === undefined ? 1 : config.workers;
    const problems = [];
    if (!Number.isInteger(config.port) || config.port < 1 ||
        config.port > 65535) {
        problems.push(`invalid port ${config.port}`);
    }
    if (!Number.isInteger(workers) || workers < 1) {
        problems.push(`invalid workers ${workers}`);
    }
    if (!Number.isInteger(config.deadline_ms) || config.deadline_ms < 1) {
        problems.push(`invalid deadline_ms ${config.deadline_ms}`);
    }
    if (!Array.isArray(config.calls) || config.calls.length === 0) {
        problems.push('no calls');
    }
    if (problems.length > 0) {
        console.error(`node-gateway: ${path}: ${problems.join(', ')}`);
        process.exit(2);
    }
    config.workers = workers;
    return config;
}

// Keep-alive pool for http:// calls. maxFreeSockets bounds the idle
// connections kept per host. It is above the benchmark's connection counts,
// so the pool never closes a connection for lack of room.
const agent = new http.Agent({
    keepAlive: true,
    keepAliveMsecs: 30000,
    maxSockets: 4096,
    maxFreeSockets: 1024,
    scheduling: 'lifo',
});

// One HTTP/2 session per h2c origin, reused by every request. A session
// that closes, fails or receives GOAWAY is dropped, and the next call opens
// a new one.
const sessions = new Map();

function getSession(origin) {
    let session = sessions.get(origin);
    if (session !== undefined && !session.closed && !session.destroyed) {
        return session;
    }
    session = http2.connect(origin);
    const drop = () => {
        if (sessions.get(origin) === session) {
            sessions.delete(origin);
        }
    };
    // Streams on a failed session get their own error events, so the
    // session error needs no further handling here.
    session.on('error', drop);
    session.on('goaway', drop);
    session.on('close', drop);
    sessions.set(origin, session);
    return session;
}

// Turns a config entry into what the per-request code needs: the protocol,
// the parsed URL, and the JSON-encoded key written before the call's body.
function resolveCall(entry) {
    let proto;
    let url;
    if (entry.url.startsWith('http://')) {
        proto = 'h1';
        url = new URL(entry.url);
    } else if (entry.url.startsWith('h2c://')) {
        proto = 'h2c';
        url = new URL('http://' + entry.url.slice('h2c://'.length));
    } else {
        console.error(`node-gateway: call ${entry.name}: unsupported URL ` +
            `${entry.url} (expected http:// or h2c://)`);
        process.exit(2);
    }
    return {
        name: entry.name,
        proto,
        host: url.hostname,
        port: Number(url.port) || 80,
        origin: url.origin,
        path: url.pathname + url.search,
        keyPrefix: JSON.stringify(entry.name) + ':',
    };
}

// Returns the body text if it parses as JSON, else throws a CallError.
function checkBody(call, text) {
    try {
        JSON.parse(text);
    } catch (err) {
        throw new CallError(call.name, 'bad_response');
    }
    return text;
}

function fetchH1(call, signal) {
    return new Promise((resolve, reject) => {
        // With signal set, abort() destroys the request and closes its
        // socket.
        const req = http.request({
            host: call.host,
            port: call.port,
            path: call.path,
            method: 'GET',
            agent,
            signal,
        });
        req.on('error', (err) => {
            reject(signal.aborted ? err : new CallError(call.name, 'connect'));
        });
        req.on('response', (res) => {
            const status = res.statusCode;
            if (status < 200 || status > 299) {
                res.resume();
                reject(new CallError(call.name, 'status', status));
                return;
            }
            const chunks = [];
            res.on('data', (chunk) => chunks.push(chunk));
            res.on('error', (err) => {
                reject(signal.aborted
                    ? err : new CallError(call.name, 'bad_response'));
            });
            res.on('end', () => {
                try {
                    resolve(checkBody(call, Buffer.concat(chunks).toString()));
                } catch (err) {
                    reject(err);
                }
            });
        });
        req.end();
    });
}

function fetchH2C(call, signal) {
    return new Promise((resolve, reject) => {
        let stream;
        try {
            stream = getSession(call.origin).request({
                ':method': 'GET',
                ':path': call.path,
            });
        } catch (err) {
            // request() throws when the session is closing, for example
            // after a GOAWAY that has not been seen here yet.
            reject(new CallError(call.name, 'connect'));
            return;
        }
        let gotResponse = false;
        // abort() resets the stream with CANCEL and leaves the session open
        // for other requests.
        const onAbort = () => {
            stream.close(http2.constants.NGHTTP2_CANCEL);
            reject(signal.reason);
        };
        signal.addEventListener('abort', onAbort, { once: true });
        const settle = (fn, value) => {
            signal.removeEventListener('abort', onAbort);
            fn(value);
        };

        stream.on('error', () => {
            const kind = gotResponse ? 'bad_response' : 'connect';
            settle(reject, new CallError(call.name, kind));
        });
        stream.on('response', (headers) => {
            gotResponse = true;
            const status = headers[':status'];
            if (status < 200 || status > 299) {
                stream.close(http2.constants.NGHTTP2_CANCEL);
                settle(reject, new CallError(call.name, 'status', status));
            }
        });
        const chunks = [];
        stream.on('data', (chunk) => chunks.push(chunk));
        stream.on('end', () => {
            try {
                settle(resolve,
                    checkBody(call, Buffer.concat(chunks).toString()));
            } catch (err) {
                settle(reject, err);
            }
        });
        stream.on('close', () => {
            // A stream that the downstream resets with NO_ERROR gets no
            // 'error' event, only 'close' (Node's http2 documentation).
            if (!signal.aborted) {
                const kind = gotResponse ? 'bad_response' : 'connect';
                settle(reject, new CallError(call.name, kind));
            }
        });
    });
}

function sendJSON(res, status, text) {
    res.writeHead(status, {
        'Content-Type': 'application/json',
        'Content-Length': Buffer.byteLength(text),
    });
    res.end(text);
}

function sendFailure(res, err) {
    if (err === DEADLINE) {
        sendJSON(res, 504, '{"error":{"kind":"deadline"}}');
    } else if (err instanceof CallError) {
        const error = { call: err.call, kind: err.kind };
        if (err.kind === 'status') {
            error.status = err.status;
        }
        sendJSON(res, 502, JSON.stringify({ error }));
    } else {
        // Only an abort error from a client that went away gets here, and
        // that client does not read this response.
        sendJSON(res, 502, '{"error":{"kind":"internal"}}');
    }
}

function makeFanHandler(calls, deadlineMs) {
    return async function serveFan(req, res) {
        const controller = new AbortController();
        const { signal } = controller;
        // Every call adds an abort listener. Without this, Node warns once
        // a signal has more than 10.
        events.setMaxListeners(calls.length + 1, signal);
        let timer;
        const deadline = new Promise((resolve, reject) => {
            timer = setTimeout(() => reject(DEADLINE), deadlineMs);
        });
        // A client that disconnects before the response aborts the calls.
        res.on('close', () => {
            if (!res.writableFinished) {
                controller.abort();
            }
        });

        const pending = calls.map((call) => (call.proto === 'h2c'
            ? fetchH2C(call, signal) : fetchH1(call, signal)));
        let bodies;
        try {
            // Promise.all rejects at the first failed call, and the race
            // with the deadline rejects when the timer fires, both without
            // waiting for the other calls.
            bodies = await Promise.race([Promise.all(pending), deadline]);
        } catch (err) {
            clearTimeout(timer);
            controller.abort();
            sendFailure(res, err);
            return;
        }
        clearTimeout(timer);

        let out = '{';
        for (let i = 0; i < calls.length; i++) {
            if (i > 0) {
                out += ',';
            }
            out += calls[i].keyPrefix + bodies[i];
        }
        out += '}';
        sendJSON(res, 200, out);
    };
}

function runServer(config) {
    const calls = config.calls.map(resolveCall);
    const serveFan = makeFanHandler(calls, config.deadline_ms);
    const server = http.createServer((req, res) => {
        const path = req.url.split('?', 1)[0];
        if (path !== '/fan') {
            sendJSON(res, 404, '{"error":{"kind":"not_found"}}');
        } else if (req.method !== 'GET') {
            res.setHeader('Allow', 'GET');
            sendJSON(res, 405, '{"error":{"kind":"method"}}');
        } else {
            serveFan(req, res);
        }
    });
    server.keepAliveTimeout = 120000;
    server.headersTimeout = 125000;
    server.listen(config.port, '127.0.0.1');
    server.on('error', (err) => {
        console.error(`node-gateway: listen on port ${config.port}: ` +
            err.message);
        process.exit(1);
    });
}

function runPrimary(config) {
    for (let i = 0; i < config.workers; i++) {
        cluster.fork();
    }
    let stopping = false;
    cluster.on('exit', (worker, code, signalName) => {
        if (stopping) {
            if (Object.keys(cluster.workers).length === 0) {
                process.exit();
            }
            return;
        }
        // A dead worker would skew the benchmark silently, so the whole
        // gateway stops with it.
        console.error(`node-gateway: worker ${worker.process.pid} exited ` +
            `(code ${code}, signal ${signalName}); stopping`);
        stopping = true;
        stopWorkers();
        process.exitCode = 1;
    });
    // The primary exits after its workers, so the port is free once the
    // primary's pid has exited.
    const stopWorkers = () => {
        for (const worker of Object.values(cluster.workers)) {
            worker.process.kill('SIGTERM');
        }
        setTimeout(() => process.exit(), 5000).unref();
    };
    for (const name of ['SIGTERM', 'SIGINT']) {
        process.on(name, () => {
            if (!stopping) {
                stopping = true;
                stopWorkers();
            }
        });
    }
}

const config = loadConfig(parseArgs(process.argv.slice(2)));
if (config.workers > 1 && cluster.isPrimary) {
    runPrimary(config);
} else {
    runServer(config);
}
