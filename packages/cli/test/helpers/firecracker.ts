/** What tests of `tierstack restore --firecracker` need: the keeper built and a Firecracker-faithful client. */
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';

/** Builds faas's keeper (if stale) and compiles faas's fc_client into `dir`; returns the client's path. */
export function prepareFirecrackerClient(dir: string): string {
  const faasDir = dirname(createRequire(import.meta.url).resolve('@tierstack/faas/package.json'));
  execFileSync(process.execPath, [join(faasDir, 'scripts', 'build-keeper.mjs')], { stdio: 'inherit' });
  const client = join(dir, 'fc_client');
  execFileSync('gcc', ['-O2', '-pthread', '-o', client, join(faasDir, 'native-test', 'fc_client.c')]);
  return client;
}
