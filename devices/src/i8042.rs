//! A minimal i8042 keyboard controller: enough for Linux's `reboot=k` path,
//! which pulses the CPU reset line by writing 0xfe to the command port.

use crate::bus::BusDevice;
use crate::{ExitHandle, ExitReason};

/// Ports the controller spans: data at +0, command/status at +4.
pub const I8042_PORTS_LEN: u64 = 5;
const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

const CMD_RESET_CPU: u8 = 0xfe;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
/// Status: system flag set, input and output buffers empty.
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_OUTPUT_FULL: u8 = 0x01;

/// The controller. It has no keyboard; it answers probes as an idle controller.
pub struct I8042 {
    exit: ExitHandle,
    output: Option<u8>,
}

impl I8042 {
    /// A controller that requests [`ExitReason::Reset`] on a CPU-reset command.
    pub fn new(exit: ExitHandle) -> Self {
        I8042 { exit, output: None }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_OFFSET => self.output.take().unwrap_or(0),
            COMMAND_OFFSET => {
                STATUS_SYSTEM_FLAG
                    | if self.output.is_some() {
                        STATUS_OUTPUT_FULL
                    } else {
                        0
                    }
            }
            _ => 0,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != COMMAND_OFFSET {
            return;
        }
        match data.first() {
            Some(&CMD_RESET_CPU) => self.exit.request(ExitReason::Reset),
            // Output port: A20 enabled, CPU not held in reset.
            Some(&CMD_READ_OUTPUT_PORT) => self.output = Some(0x03),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_requests_reset() {
        let exit = ExitHandle::new().unwrap();
        let mut k = I8042::new(exit.clone());
        let mut s = [0u8];
        k.read(4, &mut s);
        assert_eq!(s[0] & STATUS_OUTPUT_FULL, 0);
        k.write(0, &[CMD_RESET_CPU]); // data port: not a command
        assert_eq!(exit.reason(), None);
        k.write(4, &[CMD_RESET_CPU]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn output_port_read_back() {
        let mut k = I8042::new(ExitHandle::new().unwrap());
        k.write(4, &[CMD_READ_OUTPUT_PORT]);
        let mut s = [0u8];
        k.read(4, &mut s);
        assert_ne!(s[0] & STATUS_OUTPUT_FULL, 0);
        k.read(0, &mut s);
        assert_eq!(s[0], 0x03);
        k.read(4, &mut s);
        assert_eq!(s[0] & STATUS_OUTPUT_FULL, 0);
    }
}
