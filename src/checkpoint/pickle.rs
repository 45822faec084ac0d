//! A pickle reader for PyTorch's `torch.save` files that runs no code: the opcodes that
//! build numbers, strings, tuples, lists and dicts, plus a fixed allow-list of globals
//! (`collections.OrderedDict`, torch's tensor-rebuild functions and storage types). Any
//! other global — which is how a pickle runs code — is refused by name, as
//! `torch.load(weights_only=True)` refuses it. Sizes are checked against the bytes left
//! before anything is allocated, and containers are shared (`Rc`), so a hostile memo
//! cannot blow up memory; reading the result back is bounded in depth and in nodes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// The globals a state dict may name; everything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildTensor,
    RebuildParameter,
    RebuildParameterWithState,
    /// `torch.FloatStorage` and friends: the element type, as a safetensors dtype name.
    Storage(&'static str),
}

const STORAGES: [(&str, &str); 10] = [
    ("FloatStorage", "F32"),
    ("DoubleStorage", "F64"),
    ("HalfStorage", "F16"),
    ("BFloat16Storage", "BF16"),
    ("LongStorage", "I64"),
    ("IntStorage", "I32"),
    ("ShortStorage", "I16"),
    ("CharStorage", "I8"),
    ("ByteStorage", "U8"),
    ("BoolStorage", "BOOL"),
];

fn global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("torch", s) => Global::Storage(STORAGES.iter().find(|(n, _)| *n == s)?.1),
        _ => return None,
    })
}

/// A storage named by a persistent id: its element type, key and length in elements.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub dtype: &'static str,
    pub key: String,
    pub numel: u64,
}

/// A tensor view of a storage (element offsets and strides, as torch keeps them).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

#[derive(Clone, Debug)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }
}

/// Most items on the stack and memo entries: far beyond any state dict's needs.
const MAX_STACK: usize = 1 << 22;

struct Machine<'a, F> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    /// How a persistent id (`BINPERSID`) becomes a value: the container format decides.
    persistent: F,
}

/// Runs one pickle starting at `data[0]`; returns its value and the bytes it used.
pub fn load<F>(data: &[u8], persistent: F) -> Result<(Value, usize), String>
where
    F: FnMut(&Value) -> Result<Value, String>,
{
    let mut m = Machine {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        persistent,
    };
    let v = m.run()?;
    Ok((v, m.pos))
}

impl<F: FnMut(&Value) -> Result<Value, String>> Machine<'_, F> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "truncated pickle: {n} bytes wanted at offset {}, {} left",
                    self.pos,
                    self.data.len() - self.pos
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn line(&mut self) -> Result<String, String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated pickle: a GLOBAL without its newline")?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| "a GLOBAL name is not UTF-8".to_string())?
            .to_string();
        self.pos += n + 1;
        Ok(s)
    }

    fn push(&mut self, v: Value) -> Result<(), String> {
        if self.stack.len() >= MAX_STACK {
            return Err(format!("pickle stack deeper than {MAX_STACK}"));
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> Result<Value, String> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return Err("pickle pops past a MARK".into());
        }
        self.stack
            .pop()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn top(&self) -> Result<&Value, String> {
        self.stack
            .last()
            .ok_or_else(|| "pickle stack underflow".into())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let m = self.marks.pop().ok_or("pickle has no MARK to pop to")?;
        Ok(self.stack.split_off(m))
    }

    fn memo_put(&mut self, k: u32) -> Result<(), String> {
        if self.memo.len() >= MAX_STACK && !self.memo.contains_key(&k) {
            return Err(format!("pickle memo larger than {MAX_STACK}"));
        }
        let v = self.top()?.clone();
        self.memo.insert(k, v);
        Ok(())
    }

    fn memo_get(&mut self, k: u32) -> Result<(), String> {
        let v = self
            .memo
            .get(&k)
            .cloned()
            .ok_or_else(|| format!("pickle reads memo entry {k}, which was never stored"))?;
        self.push(v)
    }

    fn text(&mut self, n: usize) -> Result<Value, String> {
        let at = self.pos;
        let s = std::str::from_utf8(self.take(n)?)
            .map_err(|_| format!("the string at offset {at} is not UTF-8"))?;
        Ok(Value::Str(s.into()))
    }

    fn long(&mut self, n: usize) -> Result<Value, String> {
        if n > 16 {
            return Err(format!("an integer of {n} bytes (at most 16 are read)"));
        }
        let b = self.take(n)?;
        let mut v: i128 = 0;
        for (i, &x) in b.iter().enumerate() {
            v |= (x as i128) << (8 * i);
        }
        // Two's complement of n bytes.
        if n > 0 && n < 16 && b[n - 1] & 0x80 != 0 {
            v -= 1i128 << (8 * n);
        }
        Ok(Value::Int(v))
    }

    fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(format!("pickle protocol {p} (at most 5 is known)"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => return self.pop(),
                b'(' => {
                    if self.marks.len() >= MAX_STACK {
                        return Err("too many MARKs".into());
                    }
                    self.marks.push(self.stack.len())
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.push(v)?
                }
                b'N' => self.push(Value::None)?,
                0x88 => self.push(Value::Bool(true))?,
                0x89 => self.push(Value::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().unwrap());
                    self.push(Value::Int(v as i128))?
                }
                b'K' => {
                    let v = self.u8()?;
                    self.push(Value::Int(v as i128))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().unwrap());
                    self.push(Value::Int(v as i128))?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    let v = self.long(n)?;
                    self.push(v)?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().unwrap());
                    self.push(Value::Float(v))?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.u8()? as usize,
                        _ => usize::try_from(self.u64()?).unwrap_or(usize::MAX),
                    };
                    let v = self.text(n)?;
                    self.push(v)?
                }
                // Python 2 byte strings (legacy torch files written by Python 2).
                b'U' | b'T' | b'C' | b'B' | 0x8e => {
                    let n = match op {
                        b'U' | b'C' => self.u8()? as usize,
                        b'T' | b'B' => self.u32()? as usize,
                        _ => usize::try_from(self.u64()?).unwrap_or(usize::MAX),
                    };
                    let b: Rc<[u8]> = self.take(n)?.into();
                    let v = match (op, std::str::from_utf8(&b)) {
                        (b'U' | b'T', Ok(s)) => Value::Str(s.into()),
                        _ => Value::Bytes(b),
                    };
                    self.push(v)?
                }
                b')' => self.push(Value::Tuple(Rc::new(Vec::new())))?,
                b']' => self.push(Value::List(Rc::default()))?,
                b'}' => self.push(Value::Dict(Rc::default()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Tuple(Rc::new(items)))?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Value::Tuple(Rc::new(items)))?
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Value::List(Rc::new(RefCell::new(items))))?
                }
                b'a' | b'e' => {
                    let items = if op == b'a' {
                        vec![self.pop()?]
                    } else {
                        self.pop_mark()?
                    };
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        v => return Err(format!("APPEND to a {} at offset {at}", v.kind())),
                    }
                }
                b's' | b'u' => {
                    let items = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        vec![k, v]
                    } else {
                        self.pop_mark()?
                    };
                    if items.len() % 2 != 0 {
                        return Err(format!("SETITEMS with an odd item count at offset {at}"));
                    }
                    let d = match self.top()? {
                        Value::Dict(d) => d.clone(),
                        v => return Err(format!("SETITEM on a {} at offset {at}", v.kind())),
                    };
                    let mut d = d.borrow_mut();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.push((k, v));
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?
                }
                b'c' | 0x93 => {
                    let (module, name) = if op == b'c' {
                        (self.line()?, self.line()?)
                    } else {
                        let name = self.pop()?;
                        let module = self.pop()?;
                        match (module, name) {
                            (Value::Str(m), Value::Str(n)) => (m.to_string(), n.to_string()),
                            _ => {
                                return Err(format!(
                                    "STACK_GLOBAL without two strings at offset {at}"
                                ))
                            }
                        }
                    };
                    let g = global(&module, &name).ok_or_else(|| {
                        format!(
                            "the pickle names the global '{module}.{name}' (offset {at}); only \
                             tensors, numbers, strings and plain containers are read (a pickle \
                             can run code through any other global: save a state_dict)"
                        )
                    })?;
                    self.push(Value::Global(g))?
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = (self.persistent)(&pid)?;
                    self.push(v)?
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = reduce(f, args).map_err(|e| format!("{e} (REDUCE at offset {at})"))?;
                    self.push(v)?
                }
                b'b' => {
                    // BUILD: attributes of an OrderedDict (a state dict's `_metadata`) are
                    // dropped; anything else with state is not a plain container.
                    let state = self.pop()?;
                    match (self.top()?, &state) {
                        (Value::Dict(_), Value::Dict(_) | Value::None) => {}
                        (Value::Tensor(_), Value::Dict(_) | Value::None | Value::Tuple(_)) => {}
                        (t, _) => {
                            return Err(format!(
                                "BUILD with a {} state on a {} at offset {at}",
                                state.kind(),
                                t.kind()
                            ))
                        }
                    }
                }
                _ => {
                    return Err(format!(
                        "pickle opcode 0x{op:02x} at offset {at} is not one torch.save writes"
                    ))
                }
            }
        }
    }
}

fn int(v: &Value, what: &str) -> Result<u64, String> {
    match v {
        Value::Int(i) => {
            u64::try_from(*i).map_err(|_| format!("{what} {i} is negative or too large"))
        }
        v => Err(format!("{what} is a {}, not an int", v.kind())),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<u64>, String> {
    match v {
        Value::Tuple(t) => t.iter().map(|x| int(x, what)).collect(),
        v => Err(format!("{what} is a {}, not a tuple", v.kind())),
    }
}

fn reduce(f: Value, args: Value) -> Result<Value, String> {
    let Value::Tuple(args) = args else {
        return Err(format!("arguments are a {}, not a tuple", args.kind()));
    };
    let g = match f {
        Value::Global(g) => g,
        v => return Err(format!("calls a {}", v.kind())),
    };
    match g {
        Global::OrderedDict if args.is_empty() => Ok(Value::Dict(Rc::default())),
        Global::RebuildTensorV2 | Global::RebuildTensor if args.len() >= 4 => {
            let Value::Storage(s) = &args[0] else {
                return Err(format!("a tensor's storage is a {}", args[0].kind()));
            };
            let t = TensorRef {
                storage: (**s).clone(),
                offset: int(&args[1], "a storage offset")?,
                shape: ints(&args[2], "a tensor size")?,
                stride: ints(&args[3], "a tensor stride")?,
            };
            if t.shape.len() != t.stride.len() {
                return Err(format!(
                    "a tensor has {} sizes and {} strides",
                    t.shape.len(),
                    t.stride.len()
                ));
            }
            Ok(Value::Tensor(Rc::new(t)))
        }
        Global::RebuildParameter | Global::RebuildParameterWithState if !args.is_empty() => {
            match &args[0] {
                Value::Tensor(_) => Ok(args[0].clone()),
                v => Err(format!("a Parameter of a {}", v.kind())),
            }
        }
        g => Err(format!("{g:?} called with {} arguments", args.len())),
    }
}

/// Most nodes visited when reading a value back (a shared DAG may be exponential).
const MAX_NODES: usize = 1 << 24;

/// Every tensor in `v`, named by its path of dict keys joined with '.' (list items by
/// index), in pickle order. Depth and visited nodes are bounded.
pub fn tensors(v: &Value) -> Result<Vec<(String, Rc<TensorRef>)>, String> {
    fn walk(
        v: &Value,
        path: &str,
        depth: usize,
        nodes: &mut usize,
        out: &mut Vec<(String, Rc<TensorRef>)>,
    ) -> Result<(), String> {
        *nodes += 1;
        if depth > 64 || *nodes > MAX_NODES {
            return Err("the pickled object is nested too deeply or is cyclic".into());
        }
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            Value::Tensor(t) => out.push((path.to_string(), t.clone())),
            Value::Dict(d) => {
                for (k, x) in d.borrow().iter() {
                    let key = match k {
                        Value::Str(s) => s.to_string(),
                        Value::Int(i) => i.to_string(),
                        k => return Err(format!("a dict key under '{path}' is a {}", k.kind())),
                    };
                    walk(x, &join(&key), depth + 1, nodes, out)?;
                }
            }
            Value::List(l) => {
                for (i, x) in l.borrow().iter().enumerate() {
                    walk(x, &join(&i.to_string()), depth + 1, nodes, out)?;
                }
            }
            Value::Tuple(l) => {
                for (i, x) in l.iter().enumerate() {
                    walk(x, &join(&i.to_string()), depth + 1, nodes, out)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(v, "", 0, &mut 0, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value, String> {
        load(bytes, |_| Err("no persistent ids here".into())).map(|(v, _)| v)
    }

    #[test]
    fn plain_containers_load() {
        // pickle.dumps({'a': [1, 2.5, 'x'], 'b': (True, None)}, protocol=2)
        let b = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00X\x01\x00\x00\x00xq\x03eX\x01\x00\x00\x00bq\x04\x88N\x86q\x05u.";
        let v = run(b).unwrap();
        let Value::Dict(d) = v else { panic!() };
        assert_eq!(d.borrow().len(), 2);
    }

    #[test]
    fn code_is_refused_by_name() {
        // pickle.dumps of a class whose __reduce__ returns (os.system, ('true',)), protocol 2.
        let b = b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.";
        let e = run(b).unwrap_err();
        assert!(e.contains("'posix.system'"), "{e}");
    }

    #[test]
    fn hostile_lengths_and_memo_fail_cleanly() {
        for (b, want) in [
            (&b"\x80\x02X\xff\xff\xff\xff"[..], "truncated"),
            (b"\x80\x02h\x05.", "never stored"),
            (b"\x80\x02.", "underflow"),
            (b"\x80\x02\x8b\xff\xff\xff\x7f", "at most 16"),
            (b"\x80\x02K\x01K\x02a.", "APPEND to a int"),
            (b"\x80\x02K\x01a.", "underflow"),
            (b"\x80\x02\xff", "opcode 0xff"),
            (b"", "truncated"),
        ] {
            let e = run(b).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn a_cyclic_list_is_refused_when_read_back() {
        // l = []; l.append(l)
        let v = run(b"\x80\x02]q\x00h\x00a.").unwrap();
        assert!(tensors(&v).unwrap_err().contains("cyclic"));
    }

    #[test]
    fn big_ints_are_twos_complement() {
        let Value::Int(i) = run(b"\x80\x02\x8a\x02\xff\xff.").unwrap() else {
            panic!()
        };
        assert_eq!(i, -1);
        let Value::Int(i) =
            run(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.").unwrap()
        else {
            panic!()
        };
        assert_eq!(i, 0x1950a86a20f9469cfc6c);
    }
}
