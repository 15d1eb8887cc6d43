//! The ACPI power button, which minivm presses when it gets SIGTERM: the
//! agent passes it on to the command as SIGTERM, as `docker stop` does, so
//! the command can end cleanly and its status comes back (143 if SIGTERM
//! kills it). minivm stops the VM hard if it has not ended by
//! `--shutdown-timeout`.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

use crate::sys;

/// `struct input_event` on x86-64: a timeval, then type, code and value.
const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// The name Linux's ACPI button driver gives its input device.
const NAME: &[u8] = b"Power Button";

/// Opens the power button's event device, from the initramfs's /dev.
pub fn open() -> Option<File> {
    let mut entries: Vec<_> = std::fs::read_dir("/dev/input")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|e| {
        let f = File::open(e.path()).ok()?;
        (sys::input_device_name(f.as_raw_fd()).ok()? == NAME).then_some(f)
    })
}

/// Whether `event` (one `input_event`) is a press of the power key.
fn is_power_press(event: &[u8; EVENT_SIZE]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// Calls `pressed` on each press, from a thread of its own.
pub fn watch(mut button: File, pressed: fn()) {
    std::thread::spawn(move || {
        let mut event = [0u8; EVENT_SIZE];
        loop {
            match button.read_exact(&mut event) {
                Ok(()) if is_power_press(&event) => pressed(),
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(0, 0, 0)), "sync");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "another key");
    }
}
