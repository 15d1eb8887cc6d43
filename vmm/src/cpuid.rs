//! The CPUID the guest sees: KVM's supported set, with per-vCPU topology, and
//! on kvm-pvm hosts without what that host's instruction emulator cannot run.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// Where kvm-pvm shows itself.
const KVM_PVM_MODULE: &str = "/sys/module/kvm_pvm";

/// Whether /dev/kvm is provided by kvm-pvm, which runs guest kernels under
/// KVM's instruction emulator (see README, "kvm-pvm hosts").
pub fn is_pvm_host() -> bool {
    std::path::Path::new(KVM_PVM_MODULE).exists()
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

/// Adjusts `cpuid` for vCPU `id` of `count`; with `pvm`, hides the
/// instructions and paravirtual features kvm-pvm's emulator lacks.
pub fn filter(cpuid: &mut CpuId, id: u8, count: u8, pvm: bool) {
    for e in cpuid.as_mut_slice() {
        filter_entry(e, id, count, pvm);
    }
}

fn filter_entry(e: &mut kvm_cpuid_entry2, id: u8, count: u8, pvm: bool) {
    match (e.function, e.index) {
        (1, _) => {
            // APIC id, logical processor count, CLFLUSH line size (8 * 8 bytes).
            e.ebx = (u32::from(id) << 24) | (u32::from(count) << 16) | (8 << 8) | (e.ebx & 0xff);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
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
        (0xb, _) | (0x1f, _) => e.edx = u32::from(id),
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
        let mut b = entry(0xb, 1);
        filter_entry(&mut b, 2, 4, false);
        assert_eq!(b.edx, 2);
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
}
