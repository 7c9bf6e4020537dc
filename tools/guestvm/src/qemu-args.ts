/** The QEMU command line (REFERENCE.md's shape: q35, TCG, no default devices, 9p shares). */
import type { KernelLayout, ToolsLayout } from './fetch.js';
import type { Initramfs } from './initramfs.js';
import { TAG_JOB, TAG_RESULTS, TAG_ROOT } from './initramfs.js';

export interface QemuPlan {
  tools: ToolsLayout;
  kernel: KernelLayout;
  initramfs: Initramfs;
  memoryMiB: number;
  cpus: number;
  jobDir: string;
  resultsDir: string;
  consoleLog: string;
  /** Extra virtio-blk disk (raw image), /dev/vda in the guest. */
  diskPath?: string;
  /** Persistent CXL type-3 device backed by these files. */
  cxl?: { backingFile: string; sizeMiB: number; lsaFile: string; lsaSizeMiB: number };
  extraKernelArgs?: readonly string[];
  /** Preset loops_per_jiffy (TSC ticks per jiffy), see hostLoopsPerJiffy(). */
  lpj?: number;
}

/**
 * TSC ticks per guest jiffy: the host's TSC rate (under TCG the guest reads the host's TSC)
 * over the guest kernel's HZ. Undefined when either is unknown; the guest then calibrates.
 */
export function hostLoopsPerJiffy(cpuinfo: string, kernelConfig: string): number | undefined {
  const mhz = Number(/^cpu MHz\s*:\s*([\d.]+)/m.exec(cpuinfo)?.[1]);
  const hz = Number(/^CONFIG_HZ=(\d+)$/m.exec(kernelConfig)?.[1]);
  if (!(mhz > 0) || !(hz > 0)) return undefined;
  return Math.round((mhz * 1e6) / hz);
}

/** A path inside a QEMU option list: commas separate options, so a literal one is doubled. */
const optPath = (p: string): string => p.replace(/,/g, ',,');

const share = (id: string, path: string, readonly: boolean): string[] => [
  '-fsdev',
  // multidevs=remap: the host root spans several devices; without it inode numbers collide
  // and the guest's view of files gets confused.
  `local,id=${id},path=${optPath(path)},security_model=none,multidevs=remap${readonly ? ',readonly=on' : ''}`,
  '-device',
  `virtio-9p-pci,fsdev=${id},mount_tag=${id}`,
];

export function qemuArgs(plan: QemuPlan): string[] {
  const kernelArgs = [
    'console=ttyS0',
    'panic=-1',
    'rdinit=/init',
    'quiet',
    'loglevel=3',
    'mitigations=off',
    '8250.nr_uarts=1',
    'random.trust_cpu=on',
    // Boot-time work that dominated initcall_debug under emulation and that no test needs:
    // crypto self-tests, loading the module-signing certificates (modules then load unverified,
    // which this kernel allows), the jitter-entropy self-test and encrypted-keys setup.
    'cryptomgr.notests',
    // TCG's CPU has no constant TSC: without a preset the second CPU's delay-loop calibration
    // falls back to the slow loop (~0.15 s). The guest's TSC ticks at the host's rate.
    ...(plan.lpj ? [`lpj=${plan.lpj}`] : []),
    // 4-level page tables: one level less to walk on every emulated TLB miss (TCG offers LA57).
    'no5lvl',
    'initcall_blacklist=load_system_certificate_list,crypto_kdf108_init,jent_mod_init,init_encrypted',
    ...(plan.cxl ? ['pcie_ports=compat'] : []), // else cxl_pci fails probing the event log
    ...(plan.extraKernelArgs ?? []),
  ];
  const args = [
    '-machine',
    plan.cxl ? 'q35,cxl=on' : 'q35',
    '-accel',
    'tcg,thread=multi',
    '-cpu',
    // hypervisor=off for CXL: else region commit fails to synchronize CPU caches.
    `${process.env.TIERSTACK_GUEST_CPU ?? 'max'}${plan.cxl ? ',hypervisor=off' : ''}`,
    '-m',
    plan.cxl ? `${plan.memoryMiB}M,maxmem=16G,slots=8` : `${plan.memoryMiB}M`,
    '-smp',
    String(plan.cpus),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-no-reboot',
    ...plan.tools.firmwareDirs.flatMap((d) => ['-L', d]),
    '-kernel',
    plan.kernel.vmlinuz,
    '-initrd',
    plan.initramfs.path,
    '-append',
    kernelArgs.join(' '),
    '-chardev',
    `file,id=console,path=${optPath(plan.consoleLog)}`,
    '-serial',
    'chardev:console',
    ...share(TAG_ROOT, '/', true),
    ...share(TAG_JOB, plan.jobDir, false),
    ...share(TAG_RESULTS, plan.resultsDir, false),
  ];
  if (plan.diskPath) {
    args.push('-drive', `file=${optPath(plan.diskPath)},format=raw,if=none,id=disk0,cache=unsafe`, '-device', 'virtio-blk-pci,drive=disk0');
  }
  if (plan.cxl) {
    const c = plan.cxl;
    args.push(
      '-object',
      `memory-backend-file,id=cxl-mem0,share=on,mem-path=${optPath(c.backingFile)},size=${c.sizeMiB}M`,
      '-object',
      `memory-backend-file,id=cxl-lsa0,share=on,mem-path=${optPath(c.lsaFile)},size=${c.lsaSizeMiB}M`,
      '-device',
      'pxb-cxl,bus_nr=12,bus=pcie.0,id=cxl.0',
      '-device',
      'cxl-rp,port=0,bus=cxl.0,id=rp0,chassis=0,slot=2',
      '-device',
      'cxl-type3,bus=rp0,memdev=cxl-mem0,lsa=cxl-lsa0,id=cxl-pmem0',
      '-M',
      'cxl-fmw.0.targets.0=cxl.0,cxl-fmw.0.size=4G',
    );
  }
  return args;
}
