// Runs several `stint serve` replicas on one database behind one HTTP proxy without sticky
// sessions, so the browser tests reach every replica through the one public URL that
// Keycloak redirects to.
//
//   node replicas.mjs --listen HOST:PORT --control PORT --replica NAME=PORT... -- PROGRAM [ARG...]
//
// Each replica runs PROGRAM with the proxy's environment, except that STINT_LISTEN is
// 127.0.0.1 and the replica's port. STINT_PUBLIC_URL and STINT_DATABASE_URL are shared, and
// the database URL must be a PostgreSQL one.
//
// Routing: a request with the header `x-stint-replica: NAME` goes to that replica, or gets
// 503 when it is not serving. Any other request goes to the next serving replica in turn.
// Every response carries `x-stint-replica` with the name of the replica that sent it.
// The request line, the Host header, the body and the response (status, headers such as
// Set-Cookie and Location, streamed body) pass unchanged. The exceptions are hop-by-hop
// headers, as for any HTTP/1.1 proxy, and the request's `x-stint-replica`, which the proxy
// removes.
//
// The control listener on 127.0.0.1:CONTROL serves the tests:
//   GET  /replicas            each replica's name, port, pid and whether it is serving
//   POST /kill?replica=NAME   sends SIGKILL and waits until the process has exited
//   POST /start?replica=NAME  starts the replica again and waits until /healthz returns 200
//
// A replica that stops without a /kill stops the proxy with exit status 1, so a crash fails
// the tests instead of leaving one replica to serve them. On SIGTERM, SIGINT or SIGHUP the
// proxy sends SIGTERM to the replicas, waits up to 10 s, then sends SIGKILL and exits.

import { spawn } from 'node:child_process';
import http from 'node:http';
import readline from 'node:readline';

const PIN_HEADER = 'x-stint-replica';
const HEALTH_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;

// Hop-by-hop headers describe one connection rather than the message, so a proxy does not
// forward them. Node's HTTP client and server write their own for each side.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** Parses the command line into the listen address, control port, replicas and program. */
function parseArguments(argv) {
  const separator = argv.indexOf('--');
  if (separator < 0 || separator === argv.length - 1) {
    usage('missing `-- PROGRAM [ARG...]`');
  }
  const options = argv.slice(0, separator);
  const command = argv.slice(separator + 1);

  let listen = null;
  let controlPort = null;
  const replicas = [];
  for (let index = 0; index < options.length; index += 2) {
    const [name, value] = [options[index], options[index + 1]];
    if (value === undefined) usage(`option ${name} has no value`);
    if (name === '--listen') {
      const match = /^([^:]+):(\d+)$/.exec(value);
      if (!match) usage(`--listen must be HOST:PORT, not \`${value}\``);
      listen = { host: match[1], port: Number(match[2]) };
    } else if (name === '--control') {
      controlPort = parsePort(value, name);
    } else if (name === '--replica') {
      const match = /^([a-z0-9-]+)=(\d+)$/.exec(value);
      if (!match) usage(`--replica must be NAME=PORT with NAME in a-z, 0-9 and -, not \`${value}\``);
      replicas.push({ name: match[1], port: parsePort(match[2], name) });
    } else {
      usage(`unknown option ${name}`);
    }
  }

  if (!listen) usage('missing --listen');
  if (controlPort === null) usage('missing --control');
  if (replicas.length === 0) usage('missing --replica');
  if (new Set(replicas.map((replica) => replica.name)).size !== replicas.length) {
    usage('two --replica options have the same name');
  }
  return { listen, controlPort, replicas, command };
}

function parsePort(text, option) {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 1 || port > 65535) usage(`${option}: invalid port \`${text}\``);
  return port;
}

function usage(problem) {
  console.error(`replicas.mjs: ${problem}`);
  console.error(
    'usage: node replicas.mjs --listen HOST:PORT --control PORT --replica NAME=PORT... -- PROGRAM [ARG...]',
  );
  process.exit(2);
}

function log(message) {
  console.log(`[replicas] ${message}`);
}

/** Copies each line of `stream` to `output` with the replica's name in front. */
function forwardLines(stream, output, name) {
  readline.createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
    output.write(`[replica ${name}] ${line}\n`);
  });
}

const { listen, controlPort, replicas, command } = parseArguments(process.argv.slice(2));
const databaseUrl = process.env.STINT_DATABASE_URL ?? process.env.DATABASE_URL ?? '';
if (!/^postgres(ql)?:\/\//.test(databaseUrl)) {
  console.error(
    'replicas.mjs: replicas need one PostgreSQL database: set STINT_DATABASE_URL to postgres://…, ' +
      `not \`${databaseUrl || '(unset)'}\``,
  );
  process.exit(2);
}

// Each replica: its name and port, the running child process, the promise of that child's
// exit, whether the proxy sends requests to it, and whether a /kill stopped it.
for (const replica of replicas) {
  replica.child = null;
  replica.exited = null;
  replica.serving = false;
  replica.killRequested = false;
}
let shuttingDown = false;
let nextReplica = 0;

/** Starts `replica`'s process; its exit resolves `replica.exited`. */
function spawnReplica(replica) {
  const [program, ...args] = command;
  const child = spawn(program, args, {
    env: { ...process.env, STINT_LISTEN: `127.0.0.1:${replica.port}` },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  replica.child = child;
  replica.killRequested = false;
  forwardLines(child.stdout, process.stdout, replica.name);
  forwardLines(child.stderr, process.stderr, replica.name);
  replica.exited = new Promise((resolve) => {
    const finish = (outcome, result) => {
      if (replica.child !== child) return;
      replica.child = null;
      replica.serving = false;
      log(`replica ${replica.name} (pid ${child.pid ?? 'none'}) ${outcome}`);
      resolve(result);
      if (!replica.killRequested && !shuttingDown) {
        console.error(`[replicas] replica ${replica.name} stopped without a /kill; stopping the proxy`);
        shutDown(1);
      }
    };
    // 'error' without 'exit' means the program could not be started at all.
    child.on('error', (error) => {
      if (child.pid === undefined) finish(`could not start ${program}: ${error.message}`, { code: null, signal: null });
    });
    child.on('exit', (code, signal) => {
      finish(`exited with ${signal ? `signal ${signal}` : `exit status ${code}`}`, { code, signal });
    });
  });
  if (child.pid !== undefined) log(`replica ${replica.name} started as pid ${child.pid} on 127.0.0.1:${replica.port}`);
}

/** Resolves when GET /healthz of `replica` returns 200; rejects when its process exits first
 * or after HEALTH_TIMEOUT_MS. */
async function waitUntilHealthy(replica) {
  const deadline = Date.now() + HEALTH_TIMEOUT_MS;
  const child = replica.child;
  while (Date.now() < deadline) {
    if (replica.child !== child || child === null) {
      throw new Error(`replica ${replica.name} exited before /healthz returned 200`);
    }
    const status = await new Promise((resolve) => {
      const probe = http.get({ host: '127.0.0.1', port: replica.port, path: '/healthz', agent: false }, (response) => {
        response.resume();
        resolve(response.statusCode);
      });
      probe.on('error', () => resolve(null));
      probe.setTimeout(2_000, () => probe.destroy());
    });
    if (status === 200) {
      replica.serving = true;
      log(`replica ${replica.name} is serving on 127.0.0.1:${replica.port}`);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`replica ${replica.name}: /healthz did not return 200 within ${HEALTH_TIMEOUT_MS / 1000} s`);
}

/** Sends SIGKILL to `replica` and resolves once its process has exited. */
async function killReplica(replica) {
  const child = replica.child;
  replica.serving = false;
  replica.killRequested = true;
  log(`sending SIGKILL to replica ${replica.name} (pid ${child.pid})`);
  child.kill('SIGKILL');
  await replica.exited;
  return child.pid;
}

/** Returns the replica that serves `request`, or an error status and message. */
function chooseReplica(request) {
  const pinned = request.headers[PIN_HEADER];
  if (pinned !== undefined) {
    const replica = replicas.find((candidate) => candidate.name === pinned);
    if (!replica) return { status: 400, message: `${PIN_HEADER}: no replica is named \`${pinned}\`` };
    if (!replica.serving) return { status: 503, message: `replica ${replica.name} is not serving` };
    return { replica };
  }
  for (let tried = 0; tried < replicas.length; tried++) {
    const replica = replicas[nextReplica];
    nextReplica = (nextReplica + 1) % replicas.length;
    if (replica.serving) return { replica };
  }
  return { status: 503, message: 'no replica is serving' };
}

/** Returns `rawHeaders` without hop-by-hop headers, those named in Connection, and the
 * pinning header, in the flat [name, value, ...] form that Node's HTTP APIs take. */
function endToEndHeaders(rawHeaders, dropped = []) {
  const named = new Set(dropped);
  for (let index = 0; index < rawHeaders.length; index += 2) {
    if (rawHeaders[index].toLowerCase() === 'connection') {
      for (const token of rawHeaders[index + 1].split(',')) named.add(token.trim().toLowerCase());
    }
  }
  const forwarded = [];
  for (let index = 0; index < rawHeaders.length; index += 2) {
    const name = rawHeaders[index].toLowerCase();
    if (HOP_BY_HOP.has(name) || named.has(name)) continue;
    forwarded.push(rawHeaders[index], rawHeaders[index + 1]);
  }
  return forwarded;
}

function sendError(response, status, message, replicaName) {
  const headers = { 'content-type': 'text/plain; charset=utf-8' };
  if (replicaName) headers[PIN_HEADER] = replicaName;
  response.writeHead(status, headers);
  response.end(`${message}\n`);
}

/** Forwards one request to a replica and streams its response back. */
function proxyRequest(request, response) {
  const choice = chooseReplica(request);
  if (!choice.replica) {
    sendError(response, choice.status, choice.message);
    return;
  }
  const replica = choice.replica;
  const upstream = http.request({
    host: '127.0.0.1',
    port: replica.port,
    method: request.method,
    path: request.url,
    headers: endToEndHeaders(request.rawHeaders, [PIN_HEADER]),
    // One connection per request: a kept-alive connection that the replica closes while
    // idle could fail a request that was about to reuse it.
    agent: false,
  });
  upstream.on('response', (answer) => {
    const headers = endToEndHeaders(answer.rawHeaders, [PIN_HEADER]);
    headers.push(PIN_HEADER, replica.name);
    response.writeHead(answer.statusCode, answer.statusMessage, headers);
    answer.pipe(response);
    // A replica that dies mid-body leaves the client with a cut-off response, as a real
    // load balancer would.
    answer.on('aborted', () => response.destroy());
    answer.on('error', () => response.destroy());
  });
  let clientGone = false;
  upstream.on('error', (error) => {
    // Destroying the upstream request for a client that went away also lands here.
    if (clientGone) return;
    console.error(`[replicas] ${request.method} ${request.url} to replica ${replica.name} failed: ${error.message}`);
    if (response.headersSent) {
      response.destroy();
    } else {
      sendError(response, 502, `request to replica ${replica.name} failed: ${error.message}`, replica.name);
    }
  });
  // A client that goes away takes its upstream request with it.
  response.on('close', () => {
    if (response.writableFinished) return;
    clientGone = true;
    upstream.destroy();
  });
  request.pipe(upstream);
}

function sendJson(response, status, body) {
  response.writeHead(status, { 'content-type': 'application/json' });
  response.end(`${JSON.stringify(body)}\n`);
}

/** Serves the control listener's endpoints. */
async function control(request, response) {
  const url = new URL(request.url, `http://127.0.0.1:${controlPort}`);
  if (request.method === 'GET' && url.pathname === '/replicas') {
    sendJson(
      response,
      200,
      replicas.map(({ name, port, child, serving }) => ({ name, port, pid: child?.pid ?? null, serving })),
    );
    return;
  }
  const action = url.pathname.slice(1);
  if (request.method !== 'POST' || !['kill', 'start'].includes(action)) {
    sendJson(response, 404, { error: `no endpoint ${request.method} ${url.pathname}` });
    return;
  }
  const name = url.searchParams.get('replica');
  const replica = replicas.find((candidate) => candidate.name === name);
  if (!replica) {
    sendJson(response, 400, { error: `no replica is named \`${name}\`` });
    return;
  }
  if (action === 'kill') {
    if (!replica.child) {
      sendJson(response, 409, { error: `replica ${name} is not running` });
      return;
    }
    const pid = await killReplica(replica);
    sendJson(response, 200, { replica: name, pid, signal: 'SIGKILL' });
    return;
  }
  if (replica.child) {
    sendJson(response, 409, { error: `replica ${name} is already running as pid ${replica.child.pid}` });
    return;
  }
  spawnReplica(replica);
  try {
    await waitUntilHealthy(replica);
    sendJson(response, 200, { replica: name, pid: replica.child.pid });
  } catch (error) {
    sendJson(response, 500, { error: error.message });
  }
}

const proxy = http.createServer(proxyRequest);
const controlServer = http.createServer((request, response) => {
  control(request, response).catch((error) => sendJson(response, 500, { error: String(error) }));
});

/** Stops both listeners and every replica, then exits with `status`. */
async function shutDown(status) {
  if (shuttingDown) return;
  shuttingDown = true;
  proxy.close();
  controlServer.close();
  const running = replicas.filter((replica) => replica.child);
  for (const replica of running) {
    replica.serving = false;
    if (replica.child.pid !== undefined) log(`sending SIGTERM to replica ${replica.name} (pid ${replica.child.pid})`);
    replica.child.kill('SIGTERM');
  }
  const stopped = Promise.all(running.map((replica) => replica.exited));
  const timedOut = new Promise((resolve) => setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS));
  if ((await Promise.race([stopped, timedOut])) === 'timeout') {
    for (const replica of replicas.filter((candidate) => candidate.child)) {
      log(`replica ${replica.name} did not stop within ${STOP_TIMEOUT_MS / 1000} s; sending SIGKILL`);
      replica.child.kill('SIGKILL');
    }
    await stopped;
  }
  process.exit(status);
}

for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(signal, () => {
    log(`received ${signal}; stopping the replicas`);
    shutDown(0);
  });
}
// Last resort for an exit that skips shutDown, such as an uncaught exception.
process.on('exit', () => {
  for (const replica of replicas) replica.child?.kill('SIGKILL');
});

for (const replica of replicas) spawnReplica(replica);
try {
  await Promise.all(replicas.map(waitUntilHealthy));
} catch (error) {
  console.error(`[replicas] ${error.message}`);
  await shutDown(1);
}
controlServer.listen(controlPort, '127.0.0.1');
proxy.listen(listen.port, listen.host, () => {
  const targets = replicas.map((replica) => `${replica.name} on ${replica.port}`).join(', ');
  log(`proxy on http://${listen.host}:${listen.port} to replicas ${targets}; control on 127.0.0.1:${controlPort}`);
});
