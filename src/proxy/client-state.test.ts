import { describe, expect, it } from 'vitest';
import { ClientState, settingsFor, type ServerState } from './client-state.js';

function server(reported: Record<string, string> = {}, appliedKey = ''): ServerState {
  const map = new Map(Object.entries(reported));
  return {
    owner: undefined,
    ownerVersion: 0,
    appliedKey,
    prepared: new Map(),
    shapes: new Map(),
    reported: map,
    initial: new Map(map),
  };
}

describe('ClientState', () => {
  it('turns startup parameters and options -c into set_config calls, lists kept whole', () => {
    const state = new ClientState(
      new Map([
        ['application_name', "it's me"],
        ['options', '-c search_path=a,b --statement-timeout=5s'],
        ['replication', 'database'],
      ]),
    );
    expect(state.statements).toEqual([
      `SELECT pg_catalog.set_config('application_name', 'it''s me', false)`,
      `SELECT pg_catalog.set_config('search_path', 'a,b', false)`,
      `SELECT pg_catalog.set_config('statement_timeout', '5s', false)`,
    ]);
  });

  it('takes the settings read back from the server as its own, replacing the earlier ones', () => {
    const state = new ClientState(new Map([['application_name', 'x']]));
    const before = state.version;
    state.adoptSettings([['search_path', 'tenant, public']]);
    expect(state.statements).toEqual([
      `SELECT pg_catalog.set_config('search_path', 'tenant, public', false)`,
    ]);
    expect(state.version).toBeGreaterThan(before);
  });

  it('marks statements that may change settings', () => {
    const state = new ClientState(new Map());
    expect(state.define('a', Buffer.from('SET search_path = x\0\0\0')).maySet).toBe(true);
    expect(state.define('b', Buffer.from("select set_config('a', 'b', false)\0\0\0")).maySet).toBe(
      true,
    );
    expect(state.define('c', Buffer.from('select * from settings\0\0\0')).maySet).toBe(false);
  });

  it('names the same statement the same way for every client, and different ones differently', () => {
    const a = new ClientState(new Map()).define('s1', Buffer.from('select 1\0\0\0'));
    const b = new ClientState(new Map()).define('other', Buffer.from('select 1\0\0\0'));
    const c = new ClientState(new Map()).define('s1', Buffer.from('select 2\0\0\0'));
    expect(a.serverName).toBe(b.serverName);
    expect(a.serverName).not.toBe(c.serverName);
    expect(Buffer.byteLength(a.serverName)).toBeLessThan(64);
  });
});

describe('settingsFor', () => {
  it('sends nothing to a connection that already carries the client’s settings', () => {
    const state = new ClientState(new Map());
    expect(settingsFor(state, server())).toBeUndefined();
  });

  it('replays the client’s statements, after RESET ALL where another client’s are in effect', () => {
    const state = new ClientState(new Map([['application_name', 'app']]));
    const set = `SELECT pg_catalog.set_config('application_name', 'app', false)`;
    expect(settingsFor(state, server())).toBe(set);
    expect(settingsFor(state, server({}, 'SET x = 1'))).toBe(`RESET ALL; ${set}`);
    expect(settingsFor(state, server({}, state.statementsKey))).toBeUndefined();
  });

  it('sets reported parameters that differ, but never read-only ones', () => {
    const state = new ClientState(new Map());
    state.reported.set('TimeZone', 'Europe/Berlin');
    state.reported.set('server_version', '18.4');
    expect(settingsFor(state, server({ TimeZone: 'UTC', server_version: '15.2' }))).toBe(
      `SELECT pg_catalog.set_config('TimeZone', 'Europe/Berlin', false)`,
    );
  });
});
