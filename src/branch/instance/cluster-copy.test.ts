import { describe, expect, it } from 'vitest';
import { segmentOf, skippedRelationFile } from './cluster-copy.js';

const SEGMENT = 16 * 1024 * 1024;

describe('segmentOf', () => {
  it('places an LSN in its 16 MB segment, counting across the 4 GB log ids', () => {
    expect(segmentOf('0/2000028', SEGMENT, false)).toBe(2);
    expect(segmentOf('1/0', SEGMENT, false)).toBe(256);
    expect(segmentOf('1/FF000000', SEGMENT, false)).toBe(511);
  });

  it('gives an end LSN on a segment boundary to the segment it ends', () => {
    expect(segmentOf('0/3000000', SEGMENT, true)).toBe(2);
    expect(segmentOf('0/3000000', SEGMENT, false)).toBe(3);
    expect(segmentOf('0/3000028', SEGMENT, true)).toBe(3);
  });
});

describe('skippedRelationFile', () => {
  const files = new Set(['16384', '16384_fsm', '16385', '16385_init', '16385_fsm', '16385.1']);

  it("leaves out an unlogged relation's forks but its init fork", () => {
    expect(skippedRelationFile('16385', files)).toBe(true);
    expect(skippedRelationFile('16385.1', files)).toBe(true);
    expect(skippedRelationFile('16385_fsm', files)).toBe(true);
    expect(skippedRelationFile('16385_init', files)).toBe(false);
  });

  it('keeps logged relations and other files, and leaves out temporary relations', () => {
    expect(skippedRelationFile('16384', files)).toBe(false);
    expect(skippedRelationFile('16384_fsm', files)).toBe(false);
    expect(skippedRelationFile('PG_VERSION', files)).toBe(false);
    expect(skippedRelationFile('t3_16390', files)).toBe(true);
    expect(skippedRelationFile('t3_16390_vm', files)).toBe(true);
  });
});
