// Inside the QEMU guest only (see verbs-cases.ts). One process, so the order matters: ofi_rxm over
// verbs first, because libfabric reads its environment once, at the process's first use, and the
// rxm defaults (universe and queue sizes) must be in place then; plain verbs does not use them.
import { verbsCases } from './verbs-cases.js';

verbsCases({ provider: 'verbs;ofi_rxm' });
verbsCases({ provider: 'verbs', cabi: true, kill9: true, memlock: true });
