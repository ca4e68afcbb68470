import { describe, expect, it } from 'vitest';
import { streamingProblem } from './standby.js';

const SOURCE = 'replicator@db.prod:5432';
const at = (line: string) => `2026-12-06 10:42:03.123 UTC [4242] ${line}`;

describe('streamingProblem: what the standby log says of why it does not stream', () => {
  it('names a timeline the standby cannot follow, the WAL or slot gone, another cluster', () => {
    const cases: [string, RegExp][] = [
      [
        "FATAL:  could not start WAL streaming: ERROR:  requested starting point 0/5000000 on timeline 1 is not in this server's history",
        /can't follow the timeline of the source replicator@db\.prod:5432/,
      ],
      [
        'LOG:  new timeline 3 forked off current database system timeline 2 before current recovery point 0/6000028',
        /can't follow the timeline/,
      ],
      [
        'FATAL:  highest timeline 1 of the primary is behind recovery timeline 2',
        /can't follow the timeline/,
      ],
      [
        'FATAL:  could not receive data from WAL stream: ERROR:  requested WAL segment 000000010000000000000003 has already been removed',
        /has removed WAL the standby still needs/,
      ],
      [
        'FATAL:  could not start WAL streaming: ERROR:  replication slot "pgbranch_x_1234" does not exist',
        /replication slot is gone/,
      ],
      [
        'FATAL:  could not start WAL streaming: ERROR:  requested starting point 0/9000000 is ahead of the WAL flush position of this server 0/7000148',
        /is behind what the standby replayed/,
      ],
      [
        'FATAL:  database system identifier differs between the primary and standby',
        /^the source replicator@db\.prod:5432 is now another cluster \(not the one of system identifier 7 the standby follows\)/,
      ],
    ];
    for (const [line, problem] of cases) {
      expect(streamingProblem(['LOG:  started streaming WAL', at(line)], SOURCE, '7')).toMatch(
        problem,
      );
    }
  });

  it('is null while the last word is streaming, or a source that is merely down', () => {
    const forked = at(
      'LOG:  new timeline 3 forked off current database system timeline 2 before current recovery point 0/6000028',
    );
    expect(
      streamingProblem(
        [forked, at('LOG:  started streaming WAL from primary at 0/7000000 on timeline 3')],
        SOURCE,
        '7',
      ),
    ).toBeNull();
    expect(
      streamingProblem(
        [
          at(
            'FATAL:  could not connect to the primary server: connection to server at "127.0.0.1", port 5432 failed: Connection refused',
          ),
        ],
        SOURCE,
        '7',
      ),
    ).toBeNull();
    expect(streamingProblem([], SOURCE, '7')).toBeNull();
  });
});
