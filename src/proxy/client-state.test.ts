import { describe, expect, it } from 'vitest';
import { ClientState, settingsFor, type ServerState } from './client-state.js';

function server(reported: Record<string, string> = {}, appliedKey = ''): ServerState {
  const map = new Map(Object.entries(reported));
  return {
    owner: undefined,
    ownerVersion: 0,
    appliedKey,
    prepared: new Map(),
    reported: map,
    initial: new Map(map),
  };
}

describe('ClientState', () => {
  it('turns startup parameters and options -c into SET statements', () => {
    const state = new ClientState(
      new Map([
        ['application_name', "it's me"],
        ['options', '-c work_mem=7MB --statement-timeout=5s -cgeqo=off'],
        ['replication', 'database'],
      ]),
    );
    expect(state.statements).toEqual([
      `SET "application_name" = 'it''s me'`,
      `SET "work_mem" = '7MB'`,
      `SET "statement_timeout" = '5s'`,
      `SET "geqo" = 'off'`,
    ]);
  });

  it('records queries made only of SET and RESET, but not SET LOCAL or mixed queries', () => {
    const state = new ClientState(new Map());
    expect(state.noteSettings('SET search_path = a, b')).toBe(true);
    expect(state.noteSettings('set statement_timeout to 5; reset work_mem')).toBe(true);
    expect(state.noteSettings('SET LOCAL work_mem = 1')).toBe(false);
    expect(state.noteSettings('SET TRANSACTION ISOLATION LEVEL SERIALIZABLE')).toBe(false);
    expect(state.noteSettings('SET x = 1; SELECT 1')).toBe(false);
    expect(state.noteSettings('select 1')).toBe(false);
    expect(state.statements).toEqual([
      'SET search_path = a, b',
      'set statement_timeout to 5',
      'reset work_mem',
    ]);
  });

  it('forgets earlier statements at RESET ALL and DISCARD ALL', () => {
    const state = new ClientState(new Map([['application_name', 'x']]));
    state.noteSettings('SET a.b = 1');
    state.noteSettings('RESET ALL');
    expect(state.statements).toEqual(['RESET ALL']);
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
    expect(settingsFor(state, server())).toBe(`SET "application_name" = 'app'`);
    expect(settingsFor(state, server({}, 'SET x = 1'))).toBe(
      `RESET ALL; SET "application_name" = 'app'`,
    );
    expect(settingsFor(state, server({}, state.statementsKey))).toBeUndefined();
  });

  it('sets reported parameters that differ, but never read-only ones', () => {
    const state = new ClientState(new Map());
    state.reported.set('TimeZone', 'Europe/Berlin');
    state.reported.set('server_version', '18.4');
    expect(settingsFor(state, server({ TimeZone: 'UTC', server_version: '15.2' }))).toBe(
      `SET "TimeZone" = 'Europe/Berlin'`,
    );
  });
});
