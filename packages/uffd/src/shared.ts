/**
 * Shared regions: a managed region of another process whose memory is a memfd mapped MAP_SHARED
 * there and here (see native/shared_region.hpp). This is what `tierstack run` serves: the program's
 * big allocations live in such a memfd; the engine serves their missing faults from the stack,
 * tracks dirty pages with write-protect on shmem, and evicts over the residency budget by reading
 * pages through its own mapping and punching them out of the memfd (which unmaps them in the
 * program too).
 */
import { uffdAddon } from './native.js';

export interface SharedAdoptOptions {
  /** The owner's userfaultfd, not yet API'd or registered (the engine does both). Owned by the engine from now on. */
  uffd: number;
  /** The memfd the owner maps over the region (MAP_SHARED). Owned by the engine from now on. */
  memfd: number;
  /** Offset of the region's first byte in the memfd (default 0). */
  fileOffset?: bigint;
  /** The owner process: its exit ends the adoption (and releases the region's pages). */
  pid: number;
  region: {
    /** Start of the range in the owner's address space. */
    base: bigint;
    /** Bytes, a multiple of the page size. */
    size: number;
    namespace: string;
    pageOffset?: number;
    faultAround?: number;
    name?: string;
  };
  /** Resident pages allowed; over it, pages leave the owner into the stack. */
  budgetPages: number;
}

/** The kernel's support for shared regions (userfaultfd MISSING + WP on shmem, Linux >= 5.19). */
export function sharedRegionsSupported(): { supported: boolean; reason?: string } {
  return uffdAddon().sharedRegionsSupported();
}
