//! x86_64 direct Linux boot for minivm: everything that must be in guest
//! memory and in the boot vCPU before the first instruction runs.
//!
//! These are pure functions over guest memory and KVM register structs; they
//! open no KVM fds, so they are unit-tested without /dev/kvm. The recipe:
//! [`loader::load_kernel`] (ELF vmlinux or bzImage) -> [`loader::load_initrd`]
//! -> [`bootparams::write_boot_params`] (zero page, e820, command line) ->
//! [`cpu`] (GDT, identity page tables, registers for the 64-bit entry).

pub mod acpi;
pub mod bootparams;
pub mod cpu;
pub mod filemap;
pub mod layout;
pub mod loader;
pub mod ports;

/// Guest memory as the boot code sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
