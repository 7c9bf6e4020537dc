/**
 * Ready-made guest setup steps, run as root in the guest before the command, with the cache's
 * kmod/cxl/ndctl/daxctl first on PATH. They form one script run by `sh -ex` (its own process,
 * so errexit holds: inside `( ... ) || x` the shell would ignore set -e).
 */

export type GuestSetupStep = 'ublk' | 'cxl-devdax' | 'rxe';

export const SETUP_STEPS: readonly GuestSetupStep[] = ['ublk', 'cxl-devdax', 'rxe'];

/** Where the 'rxe' step puts soft-RoCE: the dummy netdev's name, address and the RDMA device. */
export const RXE = { netdev: 'dummy0', address: '10.77.0.1', prefix: 24, device: 'rxe0' } as const;

// Waits up to 20 s (guest uptime) for a path: devices appear asynchronously once their driver
// probes. Counted in seconds, not iterations: under emulation a fork costs ~0.1-0.5 s. Quiet
// under set -x (the trace would be one line per poll).
const WAIT_FOR = `wait_for() {
  { set +x; } 2>/dev/null
  read up _ < /proc/uptime; end=$(( \${up%.*} + 20 ))
  while [ ! -e "$1" ]; do
    read up _ < /proc/uptime
    if [ "\${up%.*}" -ge "$end" ]; then echo "timed out waiting for $1"; return 1; fi
    busybox sleep 0.05
  done
  echo "present: $1 (uptime $up)"; set -x
}`;

const STEPS: Record<GuestSetupStep, string> = {
  // ublk: the driver creates /dev/ublk-control (devtmpfs) as soon as it is loaded.
  ublk: `modprobe ublk_drv
wait_for /dev/ublk-control`,
  // CXL persistent type-3 device -> region -> devdax namespace (REFERENCE.md). Needs the
  // runInGuest({ cxl }) option, which also applies the two workarounds (pcie_ports=compat,
  // -cpu max,hypervisor=off).
  'cxl-devdax': `modprobe -a cxl_acpi cxl_pci cxl_mem cxl_port cxl_pmem libnvdimm nd_pmem dax_pmem device_dax dax_cxl
wait_for /sys/bus/cxl/devices/mem0
wait_for /sys/bus/cxl/devices/decoder0.0
cxl create-region -m -d decoder0.0 -t pmem -w 1 -g 256 mem0
wait_for /sys/bus/nd/devices/region0
ndctl create-namespace -m devdax -r region0 -a 2M
wait_for /dev/dax0.0`,
  // Soft-RoCE (rdma_rxe) on a dummy netdev with an IPv4 address of its own: not on lo, where
  // rdma_cm cannot resolve a route. The address exists only inside the guest (no traffic leaves
  // it). Userspace (libibverbs + the rxe provider, ibv_devices, rdma from iproute2) comes from the
  // host's root: the Debian packages are declared by @tierstack/rdma, whose tests use this step.
  // Done when ibv_devices lists the device (the uverbs node appears asynchronously).
  rxe: `modprobe -a rdma_rxe ib_uverbs rdma_ucm dummy
ip link add ${RXE.netdev} type dummy
ip addr add ${RXE.address}/${RXE.prefix} dev ${RXE.netdev}
ip link set ${RXE.netdev} up
ip link set lo up
rdma link add ${RXE.device} type rxe netdev ${RXE.netdev}
wait_for /dev/infiniband/uverbs0
wait_for /sys/class/infiniband/${RXE.device}
ibv_devices | grep -qw ${RXE.device}`,
};

/** The sh text of the given steps, in order. */
export function setupScript(steps: readonly GuestSetupStep[]): string {
  if (steps.length === 0) return '';
  // Each step is stamped with the guest's uptime (read without a fork) for the setup log.
  return [WAIT_FOR, ...steps.map((s) => `read up _ < /proc/uptime; echo "== guestvm setup: ${s} (uptime $up)"\n${STEPS[s]}`)].join('\n');
}
