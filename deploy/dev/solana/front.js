// A Solana JSON-RPC + websocket front over a litesvm VM: the local Solana
// endpoint of the scheduler's tests and of `make demo` (started through
// internal/testing/devchain). It binds 127.0.0.1 on PORT (0: any free port) and prints
// "LISTENING <port>" once ready. Everything a transaction does runs in the
// real SVM (signatures, blockhashes, System program); callers plant program
// accounts through POST /control, since the authorization program itself is
// not deployed here.
//
// Faithful to a validator where the scheduler depends on it:
// - request ids are echoed as the exact text the client sent (solana-go's
//   websocket ids exceed 2^53, which JSON.parse would round);
// - programSubscribe reports account changes with the subscription's
//   filters, and says nothing when an account is closed;
// - during an outage (POST /control {"op":"outage","ms":N}) HTTP answers
//   503 and websockets are dropped and refused;
// - the slot advances every SLOT_MS milliseconds (default 400, a
//   validator's pace) besides every write, so readers can tell a later
//   reading from an earlier one;
// - {"op":"reset"} is the front restarted empty on the same port: a new VM
//   with no accounts, the slot back to 1, a new genesis hash, websockets
//   dropped.
//
// It exits when its stdin closes (it dies with the test that started it),
// unless FRONT_DETACHED=1: then it runs until signalled (the demo's front,
// stopped by pid).
//
// FRONT_STATE=<file> keeps the chain across restarts: every account a
// control call, an airdrop or a transaction touched, and the slot, are
// written there (atomically, after each change) and loaded at start, so a
// restarted front serves the same chain at a later slot (the demo keeps it
// in its state dir). Without it the chain lives in memory only.
"use strict";
const fs = require("fs");
const http = require("http");
const { WebSocketServer } = require("ws");
const { LiteSVM, FailedTransactionMetadata } = require("litesvm");
const kit = require("@solana/kit");

const b58 = kit.getBase58Codec();
const b64 = kit.getBase64Codec();
let svm = new LiteSVM();
let slot = 1n;
// The genesis hash tells one chain from another (getGenesisHash): a new one
// for every new chain (start without state, reset), kept with the state.
const newGenesis = () => b58.decode(require("crypto").randomBytes(32));
let genesis = newGenesis();
setInterval(() => { slot++; }, Number(process.env.SLOT_MS || 400)).unref();
let downUntil = 0;
const statuses = new Map(); // signature -> {slot, err}
const subs = new Map(); // id -> {ws, kind, key, filters, encoding}
let nextSub = 1;
const stats = { rpc: 0, subscribe: 0, notifications: 0, dropped: 0 };

function down() {
  return Date.now() < downUntil;
}

// Persistence (FRONT_STATE): the addresses whose accounts are kept.
const stateFile = process.env.FRONT_STATE || "";
const touched = new Set();

function load() {
  if (!stateFile || !fs.existsSync(stateFile)) return;
  const st = JSON.parse(fs.readFileSync(stateFile, "utf8"));
  for (const a of st.accounts || []) {
    const data = b64.encode(a.data || "");
    svm.setAccount({ address: kit.address(a.address), programAddress: kit.address(a.owner),
      lamports: kit.lamports(BigInt(a.lamports)), data: new Uint8Array(data), executable: false,
      space: BigInt(data.length), exists: true });
    touched.add(a.address);
  }
  // Never back in time: the scheduler compares slots across reads.
  slot = BigInt(st.slot || 1) + 1n;
  if (st.genesis) genesis = st.genesis;
  process.stderr.write(`loaded ${touched.size} accounts at slot ${slot} from ${stateFile}\n`);
}

function save(addrs) {
  if (!stateFile) return;
  for (const a of addrs) touched.add(String(a));
  const accounts = [];
  for (const addr of touched) {
    const a = svm.getAccount(kit.address(addr));
    // Programs (the System program a transfer names) come with the VM.
    if (!a || !a.exists || a.executable) continue;
    accounts.push({ address: addr, owner: a.programAddress, lamports: String(a.lamports),
      data: b64.decode(a.data) });
  }
  const tmp = stateFile + ".tmp";
  fs.writeFileSync(tmp, JSON.stringify({ slot: Number(slot), genesis, accounts }), { mode: 0o600 });
  fs.renameSync(tmp, stateFile);
}

function encodeAccount(acct, encoding) {
  const data = acct.data;
  return {
    data: encoding === "base58" ? [b58.decode(data), "base58"] : [b64.decode(data), "base64"],
    executable: acct.executable,
    lamports: Number(acct.lamports),
    owner: acct.programAddress,
    rentEpoch: 18446744073709551615,
    space: data.length,
  };
}

function matches(acct, filters) {
  for (const f of filters || []) {
    if (f.dataSize !== undefined && acct.data.length !== f.dataSize) return false;
    if (f.memcmp) {
      const want = f.memcmp.encoding === "base64" ? b64.encode(f.memcmp.bytes) : b58.encode(f.memcmp.bytes);
      const off = f.memcmp.offset || 0;
      if (off + want.length > acct.data.length) return false;
      for (let i = 0; i < want.length; i++) if (acct.data[off + i] !== want[i]) return false;
    }
  }
  return true;
}

function getAccount(addr) {
  const a = svm.getAccount(kit.address(addr));
  return a && a.exists ? a : null;
}

// notify tells subscribers about the accounts a change touched.
function notify(addrs) {
  for (const addr of addrs) {
    const acct = getAccount(addr);
    for (const [id, s] of subs) {
      let msg;
      if (s.kind === "program") {
        if (!acct || acct.programAddress !== s.key || !matches(acct, s.filters)) continue;
        msg = { method: "programNotification", params: { subscription: id, result: {
          context: { slot: Number(slot) }, value: { pubkey: addr, account: encodeAccount(acct, s.encoding) } } } };
      } else if (s.kind === "account" && s.key === addr) {
        const value = acct ? encodeAccount(acct, s.encoding)
          : { data: ["", "base64"], executable: false, lamports: 0, owner: "11111111111111111111111111111111", rentEpoch: 0, space: 0 };
        msg = { method: "accountNotification", params: { subscription: id, result: { context: { slot: Number(slot) }, value } } };
      } else continue;
      msg.jsonrpc = "2.0";
      if (s.ws.readyState === 1) {
        s.ws.send(JSON.stringify(msg));
        stats.notifications++;
      }
    }
  }
}

class RPCError extends Error {
  constructor(code, message) { super(message); this.code = code; }
}

function rpc(method, params) {
  params = params || [];
  const cfg = (i) => (params[i] && typeof params[i] === "object" ? params[i] : {});
  const ctx = (value) => ({ context: { slot: Number(slot), apiVersion: "2.2.0" }, value });
  switch (method) {
    case "getHealth": return "ok";
    case "getVersion": return { "solana-core": "2.2.0-litesvm", "feature-set": 0 };
    case "getSlot": return Number(slot);
    case "getGenesisHash": return genesis;
    case "getLatestBlockhash":
      return ctx({ blockhash: svm.latestBlockhash(), lastValidBlockHeight: Number(slot) + 150 });
    case "getMinimumBalanceForRentExemption":
      return Number(svm.minimumBalanceForRentExemption(BigInt(params[0] || 0)));
    case "getBalance": return ctx(Number(svm.getBalance(kit.address(params[0])) || 0));
    case "getAccountInfo": {
      const a = getAccount(params[0]);
      return ctx(a ? encodeAccount(a, cfg(1).encoding) : null);
    }
    case "getMultipleAccounts":
      return ctx(params[0].map((k) => { const a = getAccount(k); return a ? encodeAccount(a, cfg(1).encoding) : null; }));
    case "getProgramAccounts": {
      const c = cfg(1);
      const out = svm.getProgramAccounts(kit.address(params[0]))
        .filter((a) => matches(a, c.filters))
        .map((a) => ({ pubkey: a.address, account: encodeAccount(a, c.encoding) }));
      return c.withContext ? ctx(out) : out;
    }
    case "requestAirdrop": {
      const r = svm.airdrop(kit.address(params[0]), kit.lamports(BigInt(params[1])));
      slot++;
      save([params[0]]);
      notify([params[0]]);
      return r && r.signature ? b58.decode(r.signature()) : "airdrop";
    }
    case "sendTransaction": {
      const enc = cfg(1).encoding || "base58";
      const bytes = enc === "base64" ? b64.encode(params[0]) : b58.encode(params[0]);
      const tx = kit.getTransactionDecoder().decode(bytes);
      const sig = Object.values(tx.signatures)[0];
      const sigText = b58.decode(sig);
      const res = svm.sendTransaction(tx);
      slot++;
      if (res instanceof FailedTransactionMetadata) {
        statuses.set(sigText, { slot: Number(slot), err: String(res.err()) });
        throw new RPCError(-32002, "Transaction simulation failed: " + String(res.err()));
      }
      statuses.set(sigText, { slot: Number(slot), err: null });
      const msg = kit.getCompiledTransactionMessageDecoder().decode(tx.messageBytes);
      save(msg.staticAccounts);
      notify(msg.staticAccounts);
      return sigText;
    }
    case "getSignatureStatuses":
      return ctx(params[0].map((s) => {
        const st = statuses.get(s);
        return st ? { slot: st.slot, confirmations: null, err: st.err, confirmationStatus: "finalized",
          status: st.err ? { Err: st.err } : { Ok: null } } : null;
      }));
    default:
      throw new RPCError(-32601, "Method not found: " + method);
  }
}

// rawID returns the exact text of the request's id.
function rawID(text) {
  const m = /"id"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|null)/.exec(text);
  return m ? m[1] : "null";
}

function answer(idText, result, err) {
  const body = err ? JSON.stringify({ code: err.code || -32603, message: err.message }) : JSON.stringify(result === undefined ? null : result);
  return `{"jsonrpc":"2.0",${err ? '"error"' : '"result"'}:${body},"id":${idText}}`;
}

function control(req) {
  switch (req.op) {
    case "setAccount": {
      const data = b64.encode(req.data || "");
      svm.setAccount({ address: kit.address(req.address), programAddress: kit.address(req.owner),
        lamports: kit.lamports(BigInt(req.lamports || 1000000)), data: new Uint8Array(data), executable: false,
        space: BigInt(data.length), exists: true });
      slot++;
      save([req.address]);
      notify([req.address]);
      return { slot: Number(slot) };
    }
    case "closeAccount": {
      svm.setAccount({ address: kit.address(req.address), programAddress: kit.address("11111111111111111111111111111111"),
        lamports: kit.lamports(0n), data: new Uint8Array(0), executable: false, space: 0n, exists: true });
      slot++;
      save([req.address]);
      notify([req.address]); // program subscribers hear nothing, as on a validator
      return { slot: Number(slot) };
    }
    case "outage":
      downUntil = Date.now() + (req.ms || 0);
      dropAll();
      return { until: downUntil };
    case "dropWebsockets":
      dropAll();
      return {};
    case "reset":
      svm = new LiteSVM();
      slot = 1n;
      genesis = newGenesis();
      statuses.clear();
      dropAll();
      return { slot: Number(slot) };
    case "stats":
      return { ...stats, subscriptions: subs.size, slot: Number(slot) };
    default:
      throw new Error("unknown op " + req.op);
  }
}

let sockets = new Set();
function dropAll() {
  for (const ws of sockets) { ws.terminate(); stats.dropped++; }
  sockets = new Set();
  subs.clear();
}

const server = http.createServer((req, res) => {
  let chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const text = Buffer.concat(chunks).toString("utf8");
    if (req.url === "/control") {
      try {
        res.writeHead(200, { "Content-Type": "application/json" });
        res.end(JSON.stringify(control(JSON.parse(text))));
      } catch (e) {
        res.writeHead(400);
        res.end(String(e));
      }
      return;
    }
    if (down()) {
      res.writeHead(503);
      res.end("outage");
      return;
    }
    stats.rpc++;
    res.writeHead(200, { "Content-Type": "application/json" });
    let parsed;
    try { parsed = JSON.parse(text); } catch (e) { res.end(answer("null", null, { code: -32700, message: "Parse error" })); return; }
    const one = (r) => {
      const idText = r.id === undefined ? "null" : JSON.stringify(r.id);
      try { return answer(idText, rpc(r.method, r.params)); } catch (e) { return answer(idText, null, e); }
    };
    if (Array.isArray(parsed)) res.end("[" + parsed.map(one).join(",") + "]");
    else {
      const idText = rawID(text);
      let out;
      try { out = answer(idText, rpc(parsed.method, parsed.params)); } catch (e) { out = answer(idText, null, e); }
      res.end(out);
    }
  });
});

const wss = new WebSocketServer({ noServer: true });
server.on("upgrade", (req, socket, head) => {
  if (down()) { socket.destroy(); return; }
  wss.handleUpgrade(req, socket, head, (ws) => {
    sockets.add(ws);
    ws.on("close", () => {
      sockets.delete(ws);
      for (const [id, s] of subs) if (s.ws === ws) subs.delete(id);
    });
    ws.on("message", (data) => {
      const text = data.toString("utf8");
      const idText = rawID(text);
      let r;
      try { r = JSON.parse(text); } catch (e) { ws.send(answer("null", null, { code: -32700, message: "Parse error" })); return; }
      const p = r.params || [];
      const conf = p[1] && typeof p[1] === "object" ? p[1] : {};
      switch (r.method) {
        case "programSubscribe":
        case "accountSubscribe": {
          const id = nextSub++;
          subs.set(id, { ws, kind: r.method === "programSubscribe" ? "program" : "account", key: p[0],
            filters: conf.filters, encoding: conf.encoding || "base64" });
          stats.subscribe++;
          ws.send(answer(idText, id));
          return;
        }
        case "programUnsubscribe":
        case "accountUnsubscribe":
          ws.send(answer(idText, subs.delete(p[0])));
          return;
        default:
          try { ws.send(answer(idText, rpc(r.method, p))); } catch (e) { ws.send(answer(idText, null, e)); }
      }
    });
  });
});

load();
server.listen(Number(process.env.PORT || 0), "127.0.0.1", () => {
  process.stdout.write("LISTENING " + server.address().port + "\n");
});
if (process.env.FRONT_DETACHED === "1") {
  for (const sig of ["SIGTERM", "SIGINT"]) process.on(sig, () => process.exit(0));
} else {
  // Die with the process that started us.
  process.stdin.on("end", () => process.exit(0));
  process.stdin.resume();
}
