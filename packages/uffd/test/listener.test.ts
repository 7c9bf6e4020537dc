/** Listener edge cases: timeouts, and close() while an accept is waiting. */
import { describe, it, expect } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listenForUffd } from '../src/index.js';

describe('UffdListener', () => {
  it('times out with TS_ERR_TIMEOUT and fails a pending accept with TS_ERR_CLOSED on close', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'uffd-lst-'));
    const listener = listenForUffd(join(dir, 's.sock'));
    await expect(listener.accept({ timeoutMs: 20 })).rejects.toMatchObject({ code: 'TS_ERR_TIMEOUT' });
    const pending = listener.accept();
    await new Promise((r) => setTimeout(r, 20));
    listener.close();
    await expect(pending).rejects.toMatchObject({ code: 'TS_ERR_CLOSED' });
    await expect(listener.accept()).rejects.toMatchObject({ code: 'TS_ERR_CLOSED' });
    rmSync(dir, { recursive: true, force: true });
  });
});
