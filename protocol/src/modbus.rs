//! A transport-free Modbus codec for the functions the lock controllers speak (FC 01, 02,
//! 03, 04, 05, 06, 16): request and response PDUs, RTU framing with CRC-16, Modbus TCP
//! MBAP headers, frame-length prediction for reading a byte stream, and RTU line timing.
//!
//! The simulator (server side) and the bus driver (client side) both use it, the way
//! tokio-modbus keeps its codec apart from its transports. A device's exception answer is
//! a [`Response::Exception`] value, not an error: the device spoke correctly, it said no.

use std::time::Duration;

/// Function codes.
pub mod function {
    pub const READ_COILS: u8 = 0x01;
    pub const READ_DISCRETE_INPUTS: u8 = 0x02;
    pub const READ_HOLDING_REGISTERS: u8 = 0x03;
    pub const READ_INPUT_REGISTERS: u8 = 0x04;
    pub const WRITE_SINGLE_COIL: u8 = 0x05;
    pub const WRITE_SINGLE_REGISTER: u8 = 0x06;
    pub const WRITE_MULTIPLE_REGISTERS: u8 = 0x10;
}

/// Largest bit count in one read (FC 01/02).
pub const MAX_READ_BITS: u16 = 2000;
/// Largest register count in one read (FC 03/04).
pub const MAX_READ_REGS: u16 = 125;
/// Largest register count in one FC 16 write.
pub const MAX_WRITE_REGS: u16 = 123;
/// Largest RTU frame.
pub const MAX_RTU_FRAME: usize = 256;

/// A request from the client (master).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    ReadCoils { addr: u16, count: u16 },
    ReadDiscreteInputs { addr: u16, count: u16 },
    ReadHoldingRegisters { addr: u16, count: u16 },
    ReadInputRegisters { addr: u16, count: u16 },
    WriteSingleCoil { addr: u16, value: bool },
    WriteSingleRegister { addr: u16, value: u16 },
    WriteMultipleRegisters { addr: u16, values: Vec<u16> },
}

/// A device's answer.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Response {
    /// FC 01 and FC 02: exactly the requested number of bits.
    Bits(Vec<bool>),
    /// FC 03 and FC 04.
    Registers(Vec<u16>),
    WriteSingleCoil {
        addr: u16,
        value: bool,
    },
    WriteSingleRegister {
        addr: u16,
        value: u16,
    },
    WriteMultipleRegisters {
        addr: u16,
        count: u16,
    },
    /// The device refused the request.
    Exception {
        function: u8,
        code: ExceptionCode,
    },
}

/// Modbus exception codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExceptionCode {
    IllegalFunction,
    IllegalDataAddress,
    IllegalDataValue,
    ServerDeviceFailure,
    Acknowledge,
    ServerDeviceBusy,
    Other(u8),
}

impl ExceptionCode {
    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => ExceptionCode::IllegalFunction,
            2 => ExceptionCode::IllegalDataAddress,
            3 => ExceptionCode::IllegalDataValue,
            4 => ExceptionCode::ServerDeviceFailure,
            5 => ExceptionCode::Acknowledge,
            6 => ExceptionCode::ServerDeviceBusy,
            n => ExceptionCode::Other(n),
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            ExceptionCode::IllegalFunction => 1,
            ExceptionCode::IllegalDataAddress => 2,
            ExceptionCode::IllegalDataValue => 3,
            ExceptionCode::ServerDeviceFailure => 4,
            ExceptionCode::Acknowledge => 5,
            ExceptionCode::ServerDeviceBusy => 6,
            ExceptionCode::Other(n) => n,
        }
    }
}

impl std::fmt::Display for ExceptionCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExceptionCode::IllegalFunction => f.write_str("01 illegal function"),
            ExceptionCode::IllegalDataAddress => f.write_str("02 illegal data address"),
            ExceptionCode::IllegalDataValue => f.write_str("03 illegal data value"),
            ExceptionCode::ServerDeviceFailure => f.write_str("04 server device failure"),
            ExceptionCode::Acknowledge => f.write_str("05 acknowledge"),
            ExceptionCode::ServerDeviceBusy => f.write_str("06 server device busy"),
            ExceptionCode::Other(n) => write!(f, "{n:02} unknown exception"),
        }
    }
}

/// Why bytes are not a valid frame or PDU.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is {found} bytes, shorter than the {min} its function needs")]
    Truncated { min: usize, found: usize },
    #[error("frame CRC is 0x{found:04X}, computed 0x{computed:04X}")]
    Crc { found: u16, computed: u16 },
    #[error("unsupported function code 0x{found:02X}")]
    Function { found: u8 },
    #[error("reply has function 0x{found:02X}, request was 0x{expected:02X}")]
    FunctionMismatch { expected: u8, found: u8 },
    #[error("{what}: expected {expected}, found {found}")]
    Field {
        what: &'static str,
        expected: String,
        found: String,
    },
    #[error("MBAP protocol id must be 0, found {found}")]
    Protocol { found: u16 },
}

impl FrameError {
    /// The exception a server answers a malformed request with.
    pub fn exception(&self) -> ExceptionCode {
        match self {
            FrameError::Function { .. } => ExceptionCode::IllegalFunction,
            _ => ExceptionCode::IllegalDataValue,
        }
    }
}

fn field(what: &'static str, expected: impl ToString, found: impl ToString) -> FrameError {
    FrameError::Field {
        what,
        expected: expected.to_string(),
        found: found.to_string(),
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn need(pdu: &[u8], min: usize) -> Result<(), FrameError> {
    if pdu.len() < min {
        Err(FrameError::Truncated {
            min,
            found: pdu.len(),
        })
    } else {
        Ok(())
    }
}

fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

impl Request {
    /// The function code.
    pub fn function(&self) -> u8 {
        use function::*;
        match self {
            Request::ReadCoils { .. } => READ_COILS,
            Request::ReadDiscreteInputs { .. } => READ_DISCRETE_INPUTS,
            Request::ReadHoldingRegisters { .. } => READ_HOLDING_REGISTERS,
            Request::ReadInputRegisters { .. } => READ_INPUT_REGISTERS,
            Request::WriteSingleCoil { .. } => WRITE_SINGLE_COIL,
            Request::WriteSingleRegister { .. } => WRITE_SINGLE_REGISTER,
            Request::WriteMultipleRegisters { .. } => WRITE_MULTIPLE_REGISTERS,
        }
    }

    /// Whether re-sending the request after a lost reply is harmless. Reads are; writes to
    /// coils are actions (UNLOCK, REBOOT) and are never repeated blindly.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Request::ReadCoils { .. }
                | Request::ReadDiscreteInputs { .. }
                | Request::ReadHoldingRegisters { .. }
                | Request::ReadInputRegisters { .. }
        )
    }

    /// Encodes the PDU (function code and data).
    pub fn encode_pdu(&self) -> Vec<u8> {
        let mut out = vec![self.function()];
        match self {
            Request::ReadCoils { addr, count }
            | Request::ReadDiscreteInputs { addr, count }
            | Request::ReadHoldingRegisters { addr, count }
            | Request::ReadInputRegisters { addr, count } => {
                out.extend_from_slice(&addr.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Request::WriteSingleCoil { addr, value } => {
                out.extend_from_slice(&addr.to_be_bytes());
                out.extend_from_slice(&if *value { [0xFF, 0x00] } else { [0, 0] });
            }
            Request::WriteSingleRegister { addr, value } => {
                out.extend_from_slice(&addr.to_be_bytes());
                out.extend_from_slice(&value.to_be_bytes());
            }
            Request::WriteMultipleRegisters { addr, values } => {
                out.extend_from_slice(&addr.to_be_bytes());
                // Callers keep values within MAX_WRITE_REGS (checked on decode); the casts
                // cannot truncate for any valid request.
                out.extend_from_slice(&(values.len() as u16).to_be_bytes());
                out.push((values.len() * 2) as u8);
                for v in values {
                    out.extend_from_slice(&v.to_be_bytes());
                }
            }
        }
        out
    }

    /// Decodes a request PDU (server side). Range rules of the Modbus specification are
    /// checked here; whether the addresses exist is the device's business.
    pub fn decode_pdu(pdu: &[u8]) -> Result<Self, FrameError> {
        use function::*;
        need(pdu, 1)?;
        let fc = pdu[0];
        match fc {
            READ_COILS | READ_DISCRETE_INPUTS | READ_HOLDING_REGISTERS | READ_INPUT_REGISTERS => {
                need(pdu, 5)?;
                let (addr, count) = (be16(pdu, 1), be16(pdu, 3));
                let max = if fc <= READ_DISCRETE_INPUTS {
                    MAX_READ_BITS
                } else {
                    MAX_READ_REGS
                };
                if count == 0 || count > max {
                    return Err(field("read count", format!("1..={max}"), count));
                }
                Ok(match fc {
                    READ_COILS => Request::ReadCoils { addr, count },
                    READ_DISCRETE_INPUTS => Request::ReadDiscreteInputs { addr, count },
                    READ_HOLDING_REGISTERS => Request::ReadHoldingRegisters { addr, count },
                    _ => Request::ReadInputRegisters { addr, count },
                })
            }
            WRITE_SINGLE_COIL => {
                need(pdu, 5)?;
                let value = match be16(pdu, 3) {
                    0xFF00 => true,
                    0x0000 => false,
                    v => {
                        return Err(field(
                            "coil value",
                            "0xFF00 or 0x0000",
                            format!("0x{v:04X}"),
                        ));
                    }
                };
                Ok(Request::WriteSingleCoil {
                    addr: be16(pdu, 1),
                    value,
                })
            }
            WRITE_SINGLE_REGISTER => {
                need(pdu, 5)?;
                Ok(Request::WriteSingleRegister {
                    addr: be16(pdu, 1),
                    value: be16(pdu, 3),
                })
            }
            WRITE_MULTIPLE_REGISTERS => {
                need(pdu, 6)?;
                let (addr, count, bytes) = (be16(pdu, 1), be16(pdu, 3), usize::from(pdu[5]));
                if count == 0 || count > MAX_WRITE_REGS {
                    return Err(field("write count", format!("1..={MAX_WRITE_REGS}"), count));
                }
                if bytes != usize::from(count) * 2 {
                    return Err(field("byte count", usize::from(count) * 2, bytes));
                }
                need(pdu, 6 + bytes)?;
                let values = (0..usize::from(count))
                    .map(|i| be16(pdu, 6 + 2 * i))
                    .collect();
                Ok(Request::WriteMultipleRegisters { addr, values })
            }
            found => Err(FrameError::Function { found }),
        }
    }
}

impl Response {
    /// Encodes the response PDU (server side).
    pub fn encode_pdu(&self, function: u8) -> Vec<u8> {
        match self {
            Response::Bits(bits) => {
                let packed = pack_bits(bits);
                let mut out = vec![function, packed.len() as u8];
                out.extend_from_slice(&packed);
                out
            }
            Response::Registers(regs) => {
                let mut out = vec![function, (regs.len() * 2) as u8];
                for r in regs {
                    out.extend_from_slice(&r.to_be_bytes());
                }
                out
            }
            Response::WriteSingleCoil { addr, value } => {
                let mut out = vec![function];
                out.extend_from_slice(&addr.to_be_bytes());
                out.extend_from_slice(&if *value { [0xFF, 0x00] } else { [0, 0] });
                out
            }
            Response::WriteSingleRegister { addr, value } => {
                let mut out = vec![function];
                out.extend_from_slice(&addr.to_be_bytes());
                out.extend_from_slice(&value.to_be_bytes());
                out
            }
            Response::WriteMultipleRegisters { addr, count } => {
                let mut out = vec![function];
                out.extend_from_slice(&addr.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
                out
            }
            Response::Exception { function, code } => vec![function | 0x80, code.to_byte()],
        }
    }

    /// Decodes a response PDU to `request` (client side), checking that it answers that
    /// request: same function, the requested count, the echoed address and value.
    pub fn decode_pdu(pdu: &[u8], request: &Request) -> Result<Self, FrameError> {
        need(pdu, 2)?;
        let fc = request.function();
        if pdu[0] == fc | 0x80 {
            return Ok(Response::Exception {
                function: fc,
                code: ExceptionCode::from_byte(pdu[1]),
            });
        }
        if pdu[0] != fc {
            return Err(FrameError::FunctionMismatch {
                expected: fc,
                found: pdu[0],
            });
        }
        match request {
            Request::ReadCoils { count, .. } | Request::ReadDiscreteInputs { count, .. } => {
                let n = usize::from(*count);
                let bytes = n.div_ceil(8);
                if usize::from(pdu[1]) != bytes {
                    return Err(field("bit byte count", bytes, pdu[1]));
                }
                need(pdu, 2 + bytes)?;
                Ok(Response::Bits(
                    (0..n)
                        .map(|i| pdu[2 + i / 8] & (1 << (i % 8)) != 0)
                        .collect(),
                ))
            }
            Request::ReadHoldingRegisters { count, .. }
            | Request::ReadInputRegisters { count, .. } => {
                let bytes = usize::from(*count) * 2;
                if usize::from(pdu[1]) != bytes {
                    return Err(field("register byte count", bytes, pdu[1]));
                }
                need(pdu, 2 + bytes)?;
                Ok(Response::Registers(
                    (0..usize::from(*count))
                        .map(|i| be16(pdu, 2 + 2 * i))
                        .collect(),
                ))
            }
            Request::WriteSingleCoil { addr, value } => {
                need(pdu, 5)?;
                let echo = (be16(pdu, 1), be16(pdu, 3));
                let want = (*addr, if *value { 0xFF00 } else { 0 });
                if echo != want {
                    return Err(field(
                        "coil write echo",
                        format!("{want:?}"),
                        format!("{echo:?}"),
                    ));
                }
                Ok(Response::WriteSingleCoil {
                    addr: *addr,
                    value: *value,
                })
            }
            Request::WriteSingleRegister { addr, value } => {
                need(pdu, 5)?;
                let echo = (be16(pdu, 1), be16(pdu, 3));
                if echo != (*addr, *value) {
                    return Err(field(
                        "register write echo",
                        format!("{:?}", (addr, value)),
                        format!("{echo:?}"),
                    ));
                }
                Ok(Response::WriteSingleRegister {
                    addr: *addr,
                    value: *value,
                })
            }
            Request::WriteMultipleRegisters { addr, values } => {
                need(pdu, 5)?;
                let echo = (be16(pdu, 1), be16(pdu, 3));
                let want = (*addr, values.len() as u16);
                if echo != want {
                    return Err(field(
                        "multiple write echo",
                        format!("{want:?}"),
                        format!("{echo:?}"),
                    ));
                }
                Ok(Response::WriteMultipleRegisters {
                    addr: *addr,
                    count: want.1,
                })
            }
        }
    }
}

/// Modbus RTU framing: unit id, PDU, CRC-16 (low byte first).
pub mod rtu {
    use super::*;

    /// CRC-16/MODBUS.
    pub fn crc16(data: &[u8]) -> u16 {
        let mut crc: u16 = 0xFFFF;
        for &b in data {
            crc ^= u16::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xA001
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    /// A complete frame for `unit` around `pdu`.
    pub fn encode(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(pdu.len() + 3);
        out.push(unit);
        out.extend_from_slice(pdu);
        out.extend_from_slice(&crc16(&out).to_le_bytes());
        out
    }

    /// Checks the CRC and splits a frame into unit id and PDU.
    pub fn decode(frame: &[u8]) -> Result<(u8, &[u8]), FrameError> {
        if frame.len() < 4 {
            return Err(FrameError::Truncated {
                min: 4,
                found: frame.len(),
            });
        }
        let (body, crc) = frame.split_at(frame.len() - 2);
        let found = u16::from_le_bytes([crc[0], crc[1]]);
        let computed = crc16(body);
        if found != computed {
            return Err(FrameError::Crc { found, computed });
        }
        Ok((body[0], &body[1..]))
    }

    /// How long the request frame starting with `partial` is, once enough bytes are there
    /// to tell (`Ok(None)`: read more). Servers use it to cut a byte stream into frames.
    pub fn request_len(partial: &[u8]) -> Result<Option<usize>, FrameError> {
        use function::*;
        let Some(&fc) = partial.get(1) else {
            return Ok(None);
        };
        match fc {
            READ_COILS..=WRITE_SINGLE_REGISTER => Ok(Some(8)),
            WRITE_MULTIPLE_REGISTERS => Ok(partial.get(6).map(|&n| 9 + usize::from(n))),
            found => Err(FrameError::Function { found }),
        }
    }

    /// How long the response frame starting with `partial` is (`Ok(None)`: read more).
    /// Clients use it to know when a reply is complete without waiting for silence.
    pub fn response_len(partial: &[u8]) -> Result<Option<usize>, FrameError> {
        use function::*;
        let Some(&fc) = partial.get(1) else {
            return Ok(None);
        };
        if fc & 0x80 != 0 {
            return Ok(Some(5));
        }
        match fc {
            READ_COILS..=READ_INPUT_REGISTERS => Ok(partial.get(2).map(|&n| 5 + usize::from(n))),
            WRITE_SINGLE_COIL | WRITE_SINGLE_REGISTER | WRITE_MULTIPLE_REGISTERS => Ok(Some(8)),
            found => Err(FrameError::Function { found }),
        }
    }

    /// Time `bytes` characters take on the wire at `baud`, 8N1: 10 bits a character.
    pub fn char_time(bytes: usize, baud: u32) -> Duration {
        let baud = u64::from(baud.max(1));
        Duration::from_nanos((bytes as u64) * 10 * 1_000_000_000 / baud)
    }

    /// The silence that separates frames: 3.5 characters, fixed at 1.75 ms above 19200 baud
    /// (Modbus over serial line, §2.5.1.1).
    pub fn inter_frame_silence(baud: u32) -> Duration {
        if baud > 19200 {
            Duration::from_micros(1750)
        } else {
            let baud = u64::from(baud.max(1));
            Duration::from_nanos(35 * 1_000_000_000 / baud)
        }
    }

    /// The physical minimum for one request/reply exchange: both frames on the wire plus
    /// the silence after each.
    pub fn exchange_time(request_bytes: usize, response_bytes: usize, baud: u32) -> Duration {
        char_time(request_bytes + response_bytes, baud) + inter_frame_silence(baud) * 2
    }
}

/// Modbus TCP framing: the 7-byte MBAP header before the PDU.
pub mod tcp {
    use super::*;

    /// Length of the MBAP header.
    pub const HEADER_LEN: usize = 7;

    /// A parsed MBAP header.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Header {
        pub transaction: u16,
        /// Bytes that follow the length field: unit id plus PDU.
        pub length: u16,
        pub unit: u8,
    }

    impl Header {
        /// Bytes of PDU that follow the header.
        pub fn pdu_len(&self) -> usize {
            usize::from(self.length).saturating_sub(1)
        }
    }

    /// An ADU: header and PDU.
    pub fn encode(transaction: u16, unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + pdu.len());
        out.extend_from_slice(&transaction.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
        out.push(unit);
        out.extend_from_slice(pdu);
        out
    }

    /// Parses the 7-byte header.
    pub fn decode_header(bytes: &[u8]) -> Result<Header, FrameError> {
        if bytes.len() < HEADER_LEN {
            return Err(FrameError::Truncated {
                min: HEADER_LEN,
                found: bytes.len(),
            });
        }
        let protocol = be16(bytes, 2);
        if protocol != 0 {
            return Err(FrameError::Protocol { found: protocol });
        }
        let length = be16(bytes, 4);
        if !(2..=254).contains(&length) {
            return Err(field("MBAP length", "2..=254", length));
        }
        Ok(Header {
            transaction: be16(bytes, 0),
            length,
            unit: bytes[6],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_the_specification_example() {
        // Modbus over serial line spec: 02 07 -> CRC 0x1241, sent 41 12.
        assert_eq!(rtu::encode(0x02, &[0x07]), vec![0x02, 0x07, 0x41, 0x12]);
        // Read holding 0..1 from unit 1: 01 03 00 00 00 01 84 0A (widely published).
        assert_eq!(
            rtu::encode(
                1,
                &Request::ReadHoldingRegisters { addr: 0, count: 1 }.encode_pdu()
            ),
            vec![0x01, 0x03, 0x00, 0x00, 0x00, 0x01, 0x84, 0x0A]
        );
    }

    #[test]
    fn request_round_trips_and_lengths() {
        let reqs = [
            Request::ReadCoils { addr: 0, count: 3 },
            Request::ReadDiscreteInputs { addr: 0, count: 5 },
            Request::ReadHoldingRegisters { addr: 1, count: 4 },
            Request::ReadInputRegisters {
                addr: 0x20,
                count: 5,
            },
            Request::WriteSingleCoil {
                addr: 0,
                value: true,
            },
            Request::WriteSingleRegister { addr: 2, value: 9 },
            Request::WriteMultipleRegisters {
                addr: 0x110,
                values: vec![1, 2, 3],
            },
        ];
        for r in reqs {
            let frame = rtu::encode(7, &r.encode_pdu());
            assert_eq!(rtu::request_len(&frame), Ok(Some(frame.len())));
            let (unit, pdu) = rtu::decode(&frame).unwrap();
            assert_eq!(unit, 7);
            assert_eq!(Request::decode_pdu(pdu).unwrap(), r);
        }
    }

    #[test]
    fn response_round_trips_and_checks_echo() {
        let r = Request::ReadCoils { addr: 0, count: 10 };
        let bits: Vec<bool> = (0..10).map(|i| i % 3 == 0).collect();
        let pdu = Response::Bits(bits.clone()).encode_pdu(r.function());
        let frame = rtu::encode(1, &pdu);
        assert_eq!(rtu::response_len(&frame), Ok(Some(frame.len())));
        assert_eq!(Response::decode_pdu(&pdu, &r), Ok(Response::Bits(bits)));

        let w = Request::WriteSingleCoil {
            addr: 0,
            value: true,
        };
        let wrong = Response::WriteSingleCoil {
            addr: 1,
            value: true,
        }
        .encode_pdu(w.function());
        assert!(matches!(
            Response::decode_pdu(&wrong, &w),
            Err(FrameError::Field { .. })
        ));

        let exc = Response::Exception {
            function: 3,
            code: ExceptionCode::ServerDeviceBusy,
        }
        .encode_pdu(3);
        let frame = rtu::encode(1, &exc);
        assert_eq!(rtu::response_len(&frame), Ok(Some(5)));
        let rq = Request::ReadHoldingRegisters { addr: 0, count: 1 };
        assert_eq!(
            Response::decode_pdu(&exc, &rq),
            Ok(Response::Exception {
                function: 3,
                code: ExceptionCode::ServerDeviceBusy
            })
        );
    }

    #[test]
    fn bad_frames_are_named() {
        let mut frame = rtu::encode(1, &[3, 0, 0, 0, 1]);
        frame[3] ^= 1;
        assert!(matches!(rtu::decode(&frame), Err(FrameError::Crc { .. })));
        assert!(matches!(
            Request::decode_pdu(&[0x2B, 0, 0]),
            Err(FrameError::Function { found: 0x2B })
        ));
        assert_eq!(
            Request::decode_pdu(&[0x2B]).unwrap_err().exception(),
            ExceptionCode::IllegalFunction
        );
        assert!(matches!(
            Request::decode_pdu(&[3, 0, 0, 0, 126]),
            Err(FrameError::Field { .. })
        ));
        assert!(matches!(
            Request::decode_pdu(&[0x10, 0, 0, 0, 2, 3, 0, 0, 0]),
            Err(FrameError::Field { .. })
        ));
        assert!(matches!(
            tcp::decode_header(&[0, 1, 0, 1, 0, 6, 1]),
            Err(FrameError::Protocol { found: 1 })
        ));
    }

    #[test]
    fn line_timing() {
        // 8-byte request + 7-byte reply at 9600 baud: 15 chars * 10 bits / 9600 = 15.625 ms
        // plus two 3.5-char silences (3.646 ms each).
        let t = rtu::exchange_time(8, 7, 9600);
        assert!(
            t > Duration::from_micros(22_900) && t < Duration::from_micros(23_000),
            "{t:?}"
        );
        assert_eq!(
            rtu::inter_frame_silence(115_200),
            Duration::from_micros(1750)
        );
    }
}
