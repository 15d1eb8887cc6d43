//! The CPUID the guest sees: KVM's supported set, with per-vCPU topology, and
//! on kvm-pvm hosts without what that host's instruction emulator cannot run.

use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::Kvm;

/// Where kvm-pvm shows itself.
const KVM_PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// Whether /dev/kvm is provided by kvm-pvm, which runs guest kernels under
/// KVM's instruction emulator (see README, "kvm-pvm hosts").
pub fn is_pvm_host() -> bool {
    std::path::Path::new(KVM_PVM_MODULE).exists()
}

/// KVM's supported CPUID, asked once per run: `KVM_GET_SUPPORTED_CPUID`
/// takes 0.3 ms on a kvm-pvm host, so it runs on a thread of its own while
/// the VM is built, and every vCPU of every boot reuses the answer.
pub struct SupportedCpuid(Answer);

enum Answer {
    /// Asked on this thread, joined when first needed.
    Asking(JoinHandle<Result<CpuId, kvm_ioctls::Error>>),
    /// To be asked when first needed (a restored VM may never need it).
    Later(Arc<Kvm>),
    Known(Result<CpuId, kvm_ioctls::Error>),
}

impl SupportedCpuid {
    /// Starts asking `kvm` now, beside whatever the caller does next.
    pub fn ask(kvm: &Arc<Kvm>) -> SupportedCpuid {
        let k = kvm.clone();
        let asking = std::thread::Builder::new()
            .name("cpuid".into())
            .spawn(move || k.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES));
        SupportedCpuid(match asking {
            Ok(handle) => Answer::Asking(handle),
            Err(_) => Answer::Later(kvm.clone()),
        })
    }

    /// Asks `kvm` only when first needed.
    pub fn later(kvm: &Arc<Kvm>) -> SupportedCpuid {
        SupportedCpuid(Answer::Later(kvm.clone()))
    }

    /// KVM's answer.
    pub fn get(&mut self) -> Result<CpuId, kvm_ioctls::Error> {
        if !matches!(self.0, Answer::Known(_)) {
            let ask = std::mem::replace(&mut self.0, Answer::Known(Err(kvm_ioctls::Error::new(0))));
            self.0 = Answer::Known(match ask {
                Answer::Asking(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(kvm_ioctls::Error::new(libc::EIO))),
                Answer::Later(kvm) => kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
                Answer::Known(known) => known,
            });
        }
        match &self.0 {
            Answer::Known(known) => known.clone(),
            _ => unreachable!("answered above"),
        }
    }
}

const LEAF1_ECX_FMA: u32 = 1 << 12;
const LEAF1_ECX_CX16: u32 = 1 << 13;
const LEAF1_ECX_PCID: u32 = 1 << 17;
const LEAF1_ECX_POPCNT: u32 = 1 << 23;
const LEAF1_ECX_XSAVE: u32 = 1 << 26;
const LEAF1_ECX_OSXSAVE: u32 = 1 << 27;
const LEAF1_ECX_AVX: u32 = 1 << 28;
const LEAF1_ECX_F16C: u32 = 1 << 29;
const LEAF1_ECX_RDRAND: u32 = 1 << 30;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 4 (deterministic cache parameters): the cache type field; 0 ends the list.
const LEAF4_EAX_TYPE: u32 = 0x1f;
/// Leaf 4 bits describing the cache itself (type, level, flags), kept as KVM gives them.
const LEAF4_EAX_CACHE: u32 = 0x3fff;
/// Leaves 0xb and 0x1f (extended topology): level types of subleaves 0 and 1.
const TOPO_LEVEL_SMT: u32 = 1;
const TOPO_LEVEL_CORE: u32 = 2;
const LEAF7_EBX_FSGSBASE: u32 = 1 << 0;
const LEAF7_EBX_AVX2: u32 = 1 << 5;
const LEAF7_EBX_INVPCID: u32 = 1 << 10;
const LEAF7_EBX_RDSEED: u32 = 1 << 18;
const LEAF7_EBX_SMAP: u32 = 1 << 20;
const LEAF7_EBX_CLFLUSHOPT: u32 = 1 << 23;
const LEAF7_EBX_CLWB: u32 = 1 << 24;
/// AVX-512 F, DQ, IFMA, PF, ER, CD, BW, VL.
const LEAF7_EBX_AVX512: u32 =
    (1 << 16) | (1 << 17) | (1 << 21) | (1 << 26) | (1 << 27) | (1 << 28) | (1 << 30) | (1 << 31);
const LEAF7_ECX_PKU: u32 = 1 << 3;
const LEAF7_ECX_OSPKE: u32 = 1 << 4;
const LEAF7_EDX_ARCH_CAPABILITIES: u32 = 1 << 29;
const EXT1_EDX_RDTSCP: u32 = 1 << 27;
const KVM_CPUID_FEATURES: u32 = 0x4000_0001;
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;

/// Adjusts `cpuid` for vCPU `id` of `count` (one package of `count` cores
/// with one thread each); with `pvm`, hides the instructions and paravirtual
/// features kvm-pvm's emulator lacks.
pub fn filter(
    cpuid: &mut CpuId,
    id: u8,
    count: u8,
    pvm: bool,
) -> Result<(), vmm_sys_util::fam::Error> {
    for e in cpuid.as_mut_slice() {
        filter_entry(e, id, count, pvm);
    }
    // KVM copies the host's extended topology leaves (zeros in a VM without
    // them, the host's own shape otherwise): describe this VM's instead, so
    // the guest's topology parser agrees with leaves 1 and 4.
    let leaves = [0xb, 0x1f];
    let present: Vec<u32> = leaves
        .into_iter()
        .filter(|f| cpuid.as_slice().iter().any(|e| e.function == *f))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let mut entries: Vec<kvm_cpuid_entry2> = cpuid
        .as_slice()
        .iter()
        .filter(|e| !present.contains(&e.function))
        .copied()
        .collect();
    for function in present {
        entries.extend(extended_topology(function, id, count));
    }
    *cpuid = CpuId::from_entries(&entries)?;
    Ok(())
}

/// Subleaves 0 (threads in a core: one), 1 (cores in the package: `count`)
/// and 2 (the end of the list) of leaf 0xb or 0x1f for vCPU `id`.
fn extended_topology(function: u32, id: u8, count: u8) -> [kvm_cpuid_entry2; 3] {
    // x2APIC id bits below the package id.
    let core_shift = u32::from(count).next_power_of_two().trailing_zeros();
    let sub = |index: u32, eax: u32, ebx: u32, level: u32| kvm_cpuid_entry2 {
        function,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax,
        ebx,
        ecx: (level << 8) | index,
        edx: u32::from(id),
        ..Default::default()
    };
    [
        sub(0, 0, 1, TOPO_LEVEL_SMT),
        sub(1, core_shift, u32::from(count), TOPO_LEVEL_CORE),
        sub(2, 0, 0, 0),
    ]
}

fn filter_entry(e: &mut kvm_cpuid_entry2, id: u8, count: u8, pvm: bool) {
    match (e.function, e.index) {
        (1, _) => {
            // APIC id, logical processor count, CLFLUSH line size (8 * 8 bytes).
            e.ebx = (u32::from(id) << 24) | (u32::from(count) << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            // HTT: the logical processor count above is meaningful.
            if count > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
            if pvm {
                e.ecx &= !(LEAF1_ECX_FMA
                    | LEAF1_ECX_CX16
                    | LEAF1_ECX_PCID
                    | LEAF1_ECX_POPCNT
                    | LEAF1_ECX_XSAVE
                    | LEAF1_ECX_OSXSAVE
                    | LEAF1_ECX_AVX
                    | LEAF1_ECX_F16C
                    | LEAF1_ECX_RDRAND);
            }
        }
        (7, 0) if pvm => {
            e.ebx &= !(LEAF7_EBX_FSGSBASE
                | LEAF7_EBX_AVX2
                | LEAF7_EBX_INVPCID
                | LEAF7_EBX_RDSEED
                | LEAF7_EBX_SMAP
                | LEAF7_EBX_CLFLUSHOPT
                | LEAF7_EBX_CLWB
                | LEAF7_EBX_AVX512);
            e.ecx &= !(LEAF7_ECX_PKU | LEAF7_ECX_OSPKE);
            e.edx &= !LEAF7_EDX_ARCH_CAPABILITIES;
        }
        // XSAVE state enumeration: nothing to enumerate without XSAVE.
        (0xd, _) if pvm => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        // Caches as KVM reports them, but shared the way this VM is built:
        // L1 and L2 per core, L3 by the whole package. KVM passes the host's
        // core count through, which Linux checks against leaf 1 (a mismatch
        // is a WARN and a CPU_OUT_OF_SPEC taint at boot).
        (4, _) if e.eax & LEAF4_EAX_TYPE != 0 => {
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { u32::from(count) - 1 } else { 0 };
            e.eax = (e.eax & LEAF4_EAX_CACHE) | (sharing << 14) | ((u32::from(count) - 1) << 26);
        }
        // AMD extended APIC id, which Linux prefers when TOPOEXT is set; KVM
        // zeroes this leaf, so without it every AP "mismatches" its APIC id.
        // ebx: core id, one thread per core; ecx: node 0 of 1.
        (0x8000_001e, _) => {
            e.eax = u32::from(id);
            e.ebx = u32::from(id);
            e.ecx = 0;
            e.edx = 0;
        }
        (0x8000_0001, _) if pvm => e.edx &= !EXT1_EDX_RDTSCP,
        (KVM_CPUID_FEATURES, _) if pvm => {
            e.eax &= !(KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD)
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asked on a thread or when first needed, the answer is KVM's, and
    /// the second `get` reuses it. (Compared as a vCPU sees it: KVM's
    /// answer carries the APIC ID of the host CPU that asked, which
    /// `filter` replaces.)
    #[test]
    fn the_supported_cpuid_is_kvms_either_way() {
        if !testkit::kvm_available() {
            return;
        }
        let as_vcpu_0 = |mut c: CpuId| {
            filter(&mut c, 0, 1, is_pvm_host()).unwrap();
            c.as_slice().to_vec()
        };
        let kvm = Arc::new(Kvm::new().unwrap());
        let direct = as_vcpu_0(kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap());
        for mut s in [SupportedCpuid::ask(&kvm), SupportedCpuid::later(&kvm)] {
            assert_eq!(as_vcpu_0(s.get().unwrap()), direct);
            assert!(matches!(s.0, Answer::Known(Ok(_))));
            assert_eq!(as_vcpu_0(s.get().unwrap()), direct);
        }
    }

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: !0,
            ebx: !0,
            ecx: !0,
            edx: !0,
            ..Default::default()
        }
    }

    #[test]
    fn topology_and_hypervisor_bit() {
        let mut e = entry(1, 0);
        e.ecx = 0;
        filter_entry(&mut e, 3, 4, false);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn pvm_hides_what_the_emulator_cannot_run() {
        let mut e = entry(1, 0);
        filter_entry(&mut e, 0, 1, true);
        assert_eq!(
            e.ecx & (LEAF1_ECX_POPCNT | LEAF1_ECX_XSAVE | LEAF1_ECX_CX16),
            0
        );
        let mut e7 = entry(7, 0);
        filter_entry(&mut e7, 0, 1, true);
        assert_eq!(e7.ebx & (LEAF7_EBX_FSGSBASE | LEAF7_EBX_SMAP), 0);
        assert_eq!(e7.edx & LEAF7_EDX_ARCH_CAPABILITIES, 0);
        let mut k = entry(KVM_CPUID_FEATURES, 0);
        filter_entry(&mut k, 0, 1, true);
        assert_eq!(k.eax & KVM_FEATURE_PV_UNHALT, 0);
        // Without pvm the same leaves are untouched.
        let mut e7 = entry(7, 0);
        filter_entry(&mut e7, 0, 1, false);
        assert_eq!(e7.ebx, !0);
    }

    #[test]
    fn cache_leaves_describe_this_vm_not_the_host() {
        // An L1d and an L3 as a 64-core host reports them, and the list's end.
        let mut l1 = entry(4, 0);
        l1.eax = (63 << 26) | (1 << 14) | (1 << 5) | 1;
        let mut l3 = entry(4, 3);
        l3.eax = (63 << 26) | (127 << 14) | (3 << 5) | 3;
        let mut end = entry(4, 4);
        end.eax = 0;
        for e in [&mut l1, &mut l3, &mut end] {
            filter_entry(e, 1, 3, false);
        }
        assert_eq!(l1.eax, (2 << 26) | (1 << 5) | 1);
        assert_eq!(l3.eax, (2 << 26) | (2 << 14) | (3 << 5) | 3);
        assert_eq!(end.eax, 0, "the terminating subleaf must stay empty");
        let mut one = entry(1, 0);
        filter_entry(&mut one, 0, 1, false);
        assert_eq!(one.edx & LEAF1_EDX_HTT, 0);
        filter_entry(&mut one, 0, 2, false);
        assert_ne!(one.edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_is_rebuilt() {
        // KVM's copy of a host without the leaf: one empty subleaf 0.
        let mut host = entry(0xb, 0);
        (host.eax, host.ebx, host.ecx, host.edx) = (0, 0, 0, 0);
        let mut cpuid = CpuId::from_entries(&[entry(1, 0), host]).unwrap();
        filter(&mut cpuid, 2, 3, false).unwrap();
        let subs: Vec<_> = cpuid
            .as_slice()
            .iter()
            .filter(|e| e.function == 0xb)
            .map(|e| (e.index, e.eax, e.ebx, e.ecx, e.edx))
            .collect();
        assert_eq!(
            subs,
            [(0, 0, 1, 0x100, 2), (1, 2, 3, 0x201, 2), (2, 0, 0, 2, 2)]
        );
        assert_eq!(cpuid.as_slice().len(), 4, "leaf 1 kept, no 0x1f invented");
        // No leaf 0xb at all (an old host CPU): none is added.
        let mut old = CpuId::from_entries(&[entry(1, 0)]).unwrap();
        filter(&mut old, 0, 1, false).unwrap();
        assert_eq!(old.as_slice().len(), 1);
    }
}
