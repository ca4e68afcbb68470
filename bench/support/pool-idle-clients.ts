// Many idle clients, each logged in for real (SCRAM-SHA-256 up to ReadyForQuery), for measuring
// what a pooler's memory grows by per client. The client side keeps the salted password per salt,
// as a client may (RFC 5802, section 5.1): 10,000 logins then cost the pooler, not this process.
import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';

export interface IdleLogin {
  host: string;
  port: number;
  user: string;
  password: string;
  database: string;
}

export interface IdleClients {
  sockets: net.Socket[];
  /** Milliseconds from the first connect to the last ReadyForQuery. */
  loginMs: number;
  /** `SELECT 1` on `sample` of the clients, spread evenly: proof that they are still usable. */
  check(sample: number): Promise<void>;
  close(): Promise<void>;
}

/** Resident memory of a process, from /proc/<pid>/status (VmRSS), in bytes. */
export function residentBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (!match) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return Number(match[1]) * 1024;
}

/**
 * Makes this process's open files limit at least `files` (soft up to hard, with prlimit), so that
 * it and what it starts afterwards can hold that many sockets. Returns the limit now.
 */
export function raiseOpenFilesLimit(files: number): number {
  const [soft, hard] = execFileSync(
    'prlimit',
    ['--pid', String(process.pid), '--nofile', '--raw', '--noheadings', '--output=SOFT,HARD'],
    { encoding: 'utf8' },
  )
    .trim()
    .split(/\s+/)
    .map((word) => (word === 'unlimited' ? Infinity : Number(word)));
  if (soft! >= files) return soft!;
  const target = Math.min(hard!, Math.max(files, 65_536));
  if (target < files) {
    throw new Error(
      `the open files limit is ${soft} (hard ${hard}), and ${files} are needed: raise it first (ulimit -n ${files}, as root or with CAP_SYS_RESOURCE), or pass a smaller --idle-clients`,
    );
  }
  execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${target}:${hard}`]);
  return target;
}

/** Opens `count` clients, `concurrency` logging in at a time; rejects on the first failed login. */
export async function openIdleClients(
  login: IdleLogin,
  count: number,
  concurrency: number,
  onProgress: (opened: number) => void,
): Promise<IdleClients> {
  const sockets: net.Socket[] = [];
  const keys = new SaltedPasswords(login.password);
  const close = async () => {
    await Promise.all(
      sockets.map(
        (socket) =>
          new Promise<void>((resolve) => {
            if (socket.destroyed) return resolve();
            socket.once('close', () => resolve());
            socket.end(TERMINATE);
            setTimeout(() => socket.destroy(), 5000).unref();
          }),
      ),
    );
  };
  const started = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < count) {
      next++;
      const socket = await loginOne(login, keys);
      sockets.push(socket);
      if (sockets.length % 1000 === 0) onProgress(sockets.length);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  } catch (error) {
    await close();
    throw error;
  }
  const loginMs = performance.now() - started;
  return {
    sockets,
    loginMs,
    check: async (sample) => {
      const step = Math.max(1, Math.floor(sockets.length / sample));
      for (let i = 0; i < sockets.length; i += step) await selectOne(sockets[i]!);
    },
    close,
  };
}

const TERMINATE = Buffer.from([0x58, 0, 0, 0, 4]);

/** SaltedPassword = Hi(password, salt, i), computed once per salt and iteration count. */
class SaltedPasswords {
  private readonly cache = new Map<string, Buffer>();
  constructor(private readonly password: string) {}
  get(salt: string, iterations: number): Buffer {
    const key = `${salt}:${iterations}`;
    let salted = this.cache.get(key);
    if (!salted) {
      salted = pbkdf2Sync(this.password, Buffer.from(salt, 'base64'), iterations, 32, 'sha256');
      this.cache.set(key, salted);
    }
    return salted;
  }
}

/** Reads whole messages off a socket, one at a time, until it is handed back. */
class Messages {
  private buffer: Buffer = Buffer.alloc(0);
  private waiting: ((message: { type: number; body: Buffer }) => void) | undefined;
  private failed: ((error: Error) => void) | undefined;
  constructor(private readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.on('error', this.onEnd);
    socket.on('close', this.onEnd);
  }
  next(): Promise<{ type: number; body: Buffer }> {
    return new Promise((resolve, reject) => {
      this.waiting = resolve;
      this.failed = reject;
      this.deliver();
    });
  }
  detach(): void {
    this.socket.removeListener('data', this.onData);
    this.socket.removeListener('error', this.onEnd);
    this.socket.removeListener('close', this.onEnd);
  }
  private readonly onData = (chunk: Buffer) => {
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    this.deliver();
  };
  private readonly onEnd = () => this.failed?.(new Error('connection closed during login'));
  private deliver(): void {
    if (!this.waiting || this.buffer.length < 5) return;
    const length = this.buffer.readInt32BE(1);
    if (this.buffer.length < 1 + length) return;
    const message = { type: this.buffer[0]!, body: this.buffer.subarray(5, 1 + length) };
    this.buffer = this.buffer.subarray(1 + length);
    const resolve = this.waiting;
    this.waiting = undefined;
    this.failed = undefined;
    resolve(message);
  }
}

async function loginOne(login: IdleLogin, keys: SaltedPasswords): Promise<net.Socket> {
  const socket = net.connect({ host: login.host, port: login.port });
  socket.setNoDelay(true);
  const messages = new Messages(socket);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.write(startupMessage({ user: login.user, database: login.database }));
    const nonce = randomBytes(18).toString('base64');
    const clientFirstBare = `n=*,r=${nonce}`;
    let expectedSignature: string | undefined;
    for (;;) {
      const { type, body } = await messages.next();
      if (type === 0x45 /* E */) throw new Error(`login failed: ${errorText(body)}`);
      if (type === 0x5a /* Z */) break;
      if (type !== 0x52 /* R */) continue;
      const kind = body.readInt32BE(0);
      if (kind === 10) {
        const mechanism = Buffer.from('SCRAM-SHA-256\0');
        const response = Buffer.from(`n,,${clientFirstBare}`);
        const payload = Buffer.alloc(mechanism.length + 4 + response.length);
        mechanism.copy(payload);
        payload.writeInt32BE(response.length, mechanism.length);
        response.copy(payload, mechanism.length + 4);
        socket.write(message(0x70, payload));
      } else if (kind === 11) {
        const serverFirst = body.toString('utf8', 4);
        const fields = new Map(serverFirst.split(',').map((f) => [f[0], f.slice(2)]));
        const serverNonce = fields.get('r')!;
        if (!serverNonce.startsWith(nonce))
          throw new Error('SCRAM: server nonce does not extend ours');
        const salted = keys.get(fields.get('s')!, Number(fields.get('i')));
        const clientFinalBare = `c=biws,r=${serverNonce}`;
        const authMessage = `${clientFirstBare},${serverFirst},${clientFinalBare}`;
        const clientKey = hmac(salted, 'Client Key');
        const storedKey = createHash('sha256').update(clientKey).digest();
        const signature = hmac(storedKey, authMessage);
        const proof = Buffer.alloc(32);
        for (let i = 0; i < 32; i++) proof[i] = clientKey[i]! ^ signature[i]!;
        expectedSignature = hmac(hmac(salted, 'Server Key'), authMessage).toString('base64');
        socket.write(
          message(0x70, Buffer.from(`${clientFinalBare},p=${proof.toString('base64')}`)),
        );
      } else if (kind === 12) {
        if (body.toString('utf8', 4) !== `v=${expectedSignature}`) {
          throw new Error('SCRAM: wrong server signature');
        }
      } else if (kind !== 0) {
        throw new Error(`unexpected authentication request ${kind}`);
      }
    }
    messages.detach();
    socket.on('error', () => undefined);
    return socket;
  } catch (error) {
    messages.detach();
    socket.destroy();
    throw error;
  }
}

async function selectOne(socket: net.Socket): Promise<void> {
  const messages = new Messages(socket);
  try {
    socket.write(message(0x51, Buffer.from('SELECT 1\0')));
    for (;;) {
      const { type, body } = await messages.next();
      if (type === 0x45) throw new Error(`SELECT 1 failed: ${errorText(body)}`);
      if (type === 0x5a) return;
    }
  } finally {
    messages.detach();
  }
}

function hmac(key: Buffer, text: string): Buffer {
  return createHmac('sha256', key).update(text).digest();
}

function message(type: number, body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out[0] = type;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function startupMessage(parameters: Record<string, string>): Buffer {
  const body = Buffer.from(
    Object.entries(parameters)
      .map(([k, v]) => `${k}\0${v}\0`)
      .join('') + '\0',
  );
  const out = Buffer.alloc(8 + body.length);
  out.writeInt32BE(out.length, 0);
  out.writeInt32BE(3 << 16, 4);
  body.copy(out, 8);
  return out;
}

function errorText(body: Buffer): string {
  const fields: string[] = [];
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const end = body.indexOf(0, i + 1);
    if (body[i] === 0x43 /* C */ || body[i] === 0x4d /* M */) {
      fields.push(body.toString('utf8', i + 1, end));
    }
    i = end + 1;
  }
  return fields.join(' ');
}
