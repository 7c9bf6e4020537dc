/**
 * memd per-client quota: one client cannot take every slab. Real memd processes, real control
 * connections.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { DonorClient, MemdServer } from '../src/index.js';
import { spawnMemd, stopAll } from './helpers.js';

afterAll(stopAll);

const TOKEN = 'quota-token-0123';

describe('memd per-client quota', () => {
  it('--client-quota-slabs: a client past its quota gets TS_ERR_NO_SPACE naming the quota (logged); others are served; freeing makes room', async () => {
    const memd = await spawnMemd({ token: TOKEN, capacity: '16M', slabSize: '1M', extra: ['--client-quota-slabs', '4'] });
    const greedy = await DonorClient.connect({ host: memd.host, port: memd.port }, { token: TOKEN, clientName: 'greedy' });
    const other = await DonorClient.connect({ host: memd.host, port: memd.port }, { token: TOKEN, clientName: 'other' });
    try {
      const mine = [];
      for (let i = 0; i < 4; i++) mine.push(await greedy.allocSlab(`g${i}`));
      const err = await greedy.allocSlab('g4').then(
        () => undefined,
        (e: Error & { code?: string }) => e,
      );
      expect(err?.code).toBe('TS_ERR_NO_SPACE');
      expect(err?.message).toMatch(/client quota reached: this client holds 4 slabs, the quota is 4 slabs \(4 MiB\) per client \(--client-quota-slabs 4\)/);
      // The donor still has room for everyone else.
      for (let i = 0; i < 4; i++) await other.allocSlab(`o${i}`);
      expect((await other.stats()).slabs).toBe(8);
      // Giving one back makes room again for the same client.
      await greedy.freeSlab(BigInt(mine[0]!.slabId));
      await greedy.allocSlab('g5');
      expect(memd.stderr()).toMatch(/"client":"greedy@[^"]+".*slab refused: client quota reached/);
    } finally {
      greedy.close();
      other.close();
      await memd.stop();
    }
  });

  it('--client-quota in bytes counts whole slabs; the smaller of the two quotas wins', async () => {
    const memd = await spawnMemd({ token: TOKEN, capacity: '16M', slabSize: '1M', extra: ['--client-quota', '3M', '--client-quota-slabs', '8'] });
    const c = await DonorClient.connect({ host: memd.host, port: memd.port }, { token: TOKEN });
    try {
      for (let i = 0; i < 3; i++) await c.allocSlab(`s${i}`);
      await expect(c.allocSlab('s3')).rejects.toMatchObject({ code: 'TS_ERR_NO_SPACE', message: expect.stringMatching(/quota is 3 slabs \(3 MiB\) per client \(--client-quota-slabs 8, --client-quota 3 MiB\)/) });
    } finally {
      c.close();
      await memd.stop();
    }
  });

  it('a quota that holds no slab, or is not a positive number, is refused at start', async () => {
    expect(() => new MemdServer({ capacityBytes: 4 << 20, slabBytes: 1 << 20, clientQuotaBytes: 1000 })).toThrow(expect.objectContaining({ code: 'TS_ERR_BAD_ARGUMENT' }));
    expect(() => new MemdServer({ capacityBytes: 4 << 20, slabBytes: 1 << 20, clientQuotaSlabs: 0 })).toThrow(expect.objectContaining({ code: 'TS_ERR_BAD_ARGUMENT' }));
    await expect(spawnMemd({ capacity: '4M', slabSize: '1M', extra: ['--client-quota-slabs', 'lots'] })).rejects.toThrow(/memd: TS_ERR_BAD_ARGUMENT: --client-quota-slabs must be a positive whole number/);
  });
});
