import pino from 'pino';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { HEARTBEAT_MS, LEASE_MS, RemotePauses } from './leases.js';
import type { PeerMessage } from './peers.js';

let calls: string[];
let logged: Record<string, unknown>[];
let pauses: RemotePauses;

beforeEach(() => {
  vi.useFakeTimers();
  calls = [];
  logged = [];
  pauses = new RemotePauses(
    {
      pause: (database) => calls.push(`pause ${database}`),
      resume: (database) => calls.push(`resume ${database}`),
      close: (database) => calls.push(`close ${database}`),
    },
    pino({}, { write: (line: string) => logged.push(JSON.parse(line) as Record<string, unknown>) }),
  );
});
afterEach(() => {
  pauses.close();
  vi.useRealTimers();
});

const pause = (from: string, n: number, database = 'app'): PeerMessage => ({
  kind: 'pause',
  from,
  database,
  pause: n,
});
const held = (from: string, n: number, database = 'app'): PeerMessage => ({
  kind: 'held',
  from,
  database,
  pause: n,
});
const resume = (from: string, n: number, database = 'app', closed = false): PeerMessage => ({
  kind: 'resume',
  from,
  database,
  pause: n,
  ...(closed ? { closed: true as const } : {}),
});

describe('RemotePauses', () => {
  test('holds a pause until its resume, and ends it once', () => {
    pauses.receive(pause('a', 1));
    pauses.receive(resume('a', 1, 'app', true));
    vi.advanceTimersByTime(LEASE_MS * 2);
    expect(calls).toEqual(['pause app', 'close app', 'resume app']);
    expect(logged).toEqual([]);
  });

  test('holds a pause as long as heartbeats come, then ends it a lease after the last, saying so', () => {
    pauses.receive(pause('proxy-a', 1));
    for (let i = 0; i < 60; i++) {
      vi.advanceTimersByTime(HEARTBEAT_MS);
      pauses.receive(held('proxy-a', 1));
    }
    vi.advanceTimersByTime(LEASE_MS - 1);
    expect(calls).toEqual(['pause app']);
    vi.advanceTimersByTime(1);
    expect(calls).toEqual(['pause app', 'resume app']);
    expect(logged).toEqual([
      expect.objectContaining({
        level: 40,
        event: 'peer_pause_expired',
        database: 'app',
        peer: 'proxy-a',
      }),
    ]);
  });

  test('a resume that comes after the lease ran out closes what it says, and resumes nothing more', () => {
    pauses.receive(pause('a', 1));
    vi.advanceTimersByTime(LEASE_MS / 2);
    // Another proxy's pause of the same database, which the late resume must not end.
    pauses.receive(pause('b', 1));
    vi.advanceTimersByTime(LEASE_MS / 2);
    pauses.receive(held('b', 1));
    expect(calls).toEqual(['pause app', 'pause app', 'resume app']);
    pauses.receive(resume('a', 1, 'app', true));
    expect(calls).toEqual(['pause app', 'pause app', 'resume app', 'close app']);
    pauses.receive(resume('b', 1));
    expect(calls).toEqual(['pause app', 'pause app', 'resume app', 'close app', 'resume app']);
  });

  test('a heartbeat after the resume starts nothing', () => {
    pauses.receive(pause('a', 1));
    pauses.receive(resume('a', 1));
    pauses.receive(held('a', 1));
    vi.advanceTimersByTime(LEASE_MS * 2);
    expect(calls).toEqual(['pause app', 'resume app']);
    expect(logged).toHaveLength(0);
  });

  test('a heartbeat of a pause not heard begin, or whose lease ran out, pauses here too', () => {
    // A proxy that joined while another held a pause hears only its heartbeats.
    pauses.receive(held('a', 1));
    expect(calls).toEqual(['pause app']);
    pauses.receive(resume('a', 1));
    expect(calls).toEqual(['pause app', 'resume app']);
    // A holder that was only slow: its pause is taken up again, and ends once.
    pauses.receive(pause('a', 2));
    vi.advanceTimersByTime(LEASE_MS);
    pauses.receive(held('a', 2));
    pauses.receive(resume('a', 2));
    expect(calls).toEqual([
      'pause app',
      'resume app',
      'pause app',
      'resume app',
      'pause app',
      'resume app',
    ]);
  });

  test('two pauses of one database by one proxy end one at a time', () => {
    pauses.receive(pause('a', 1));
    pauses.receive(pause('a', 2));
    pauses.receive(resume('a', 1));
    expect(calls).toEqual(['pause app', 'pause app', 'resume app']);
    vi.advanceTimersByTime(HEARTBEAT_MS);
    pauses.receive(held('a', 2));
    vi.advanceTimersByTime(LEASE_MS - HEARTBEAT_MS);
    expect(calls).toHaveLength(3);
    pauses.receive(resume('a', 2));
    expect(calls).toEqual(['pause app', 'pause app', 'resume app', 'resume app']);
  });

  test('one proxy’s pauses of two databases have a lease each', () => {
    pauses.receive(pause('a', 1, 'app'));
    pauses.receive(pause('a', 2, 'shop'));
    for (let i = 0; i < LEASE_MS / HEARTBEAT_MS; i++) {
      vi.advanceTimersByTime(HEARTBEAT_MS);
      pauses.receive(held('a', 2, 'shop'));
    }
    expect(calls).toEqual(['pause app', 'pause shop', 'resume app']);
    pauses.receive(resume('a', 2, 'shop'));
    expect(calls).toEqual(['pause app', 'pause shop', 'resume app', 'resume shop']);
  });

  test('a repeated pause is one pause', () => {
    pauses.receive(pause('a', 1));
    pauses.receive(pause('a', 1));
    pauses.receive(resume('a', 1));
    pauses.receive(resume('a', 1));
    expect(calls).toEqual(['pause app', 'resume app']);
  });
});
