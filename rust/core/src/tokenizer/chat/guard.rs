//! Bounded work for untrusted chat templates.
//!
//! minijinja's fuel charges every instruction and the bytes and slots that operators and
//! filters create, but a value can be far larger to *walk* than it was to build: `[x] * n` is a
//! lazy sequence of `n` items that cost nothing, and `{% set ns.l = [ns.l, ns.l] %}` sixty times
//! builds a tree of 2^60 leaves from 120 slots. Printing, comparing, concatenating or
//! serializing such a value walks all of it before the engine charges anything, so one
//! instruction could take minutes and gigabytes.
//!
//! Before every instruction that walks its operands, the compiled template therefore calls a
//! guard that walks them first, charging the fuel for every item and byte it visits and stopping
//! as soon as the fuel would run out. The instruction then runs unchanged on the same values.
//! Work per render stays within the fuel (`FUEL` in `chat.rs`), which bounds both time and
//! memory.
//!
//! The guard is spliced in as a call with the operands as arguments, returning them as a list
//! that `UnpackList` puts back on the stack; jump targets and macro offsets are renumbered.

use minijinja::machinery::{ast, Instruction, Instructions};
use minijinja::value::{Rest, ValueKind, ValueOrKwargs};
use minijinja::{Environment, Error as JinjaError, ErrorKind, State, Value};

use crate::{Error, Result};

/// Fuel is counted in 64ths internally; one byte costs one of these, like minijinja's own.
const UNITS_PER_FUEL: u64 = 64;
/// Visiting one item (a list slot, a map entry's key or value): one fuel, like an instruction.
const ITEM_UNITS: u64 = 64;

const WEIGH_ONE: &str = "ferrolm:weigh_one";
const WEIGH_ALL: &str = "ferrolm:weigh_all";
const WEIGH_SHALLOW: &str = "ferrolm:weigh_shallow";
const WEIGH_GET_ITEM: &str = "ferrolm:weigh_get_item";
const WEIGH_MAP_KEYS: &str = "ferrolm:weigh_map_keys";
const WEIGH_FILTER: &str = "ferrolm:weigh_filter";
const WEIGH_TEST: &str = "ferrolm:weigh_test";
const WEIGH_METHOD: &str = "ferrolm:weigh_method";

/// Filters whose input is not walked (they look at its length or a few items, or copy item
/// references that minijinja charges as it goes); their other arguments still are.
fn filter_input_is_shallow(name: &str) -> bool {
    matches!(
        name,
        "length"
            | "count"
            | "first"
            | "last"
            | "default"
            | "d"
            | "list"
            | "reverse"
            | "batch"
            | "slice"
            | "items"
            | "attr"
            | "bool"
            | "int"
            | "float"
            | "abs"
            | "round"
            | "safe"
    )
}

/// Tests that only look at a value's type or a number.
fn test_is_shallow(name: &str) -> bool {
    matches!(
        name,
        "defined"
            | "undefined"
            | "none"
            | "string"
            | "mapping"
            | "sequence"
            | "iterable"
            | "number"
            | "integer"
            | "float"
            | "boolean"
            | "true"
            | "false"
            | "odd"
            | "even"
            | "divisibleby"
            | "callable"
            | "safe"
            | "escaped"
            | "filter"
            | "test"
            | "sameas"
    )
}

/// Methods whose receiver is not walked: dict access and the loop's `cycle`.
fn method_receiver_is_shallow(name: &str) -> bool {
    matches!(name, "get" | "items" | "keys" | "values" | "cycle")
}

fn out_of_fuel(state: &State) -> JinjaError {
    // Leave the tracker exhausted so that the engine stops at its next check too.
    let remaining = state.fuel_levels().map_or(0, |(_, r)| r);
    let _ = state.consume_fuel(remaining.saturating_add(1));
    JinjaError::new(
        ErrorKind::OutOfFuel,
        "a value in the template is too large to walk",
    )
}

/// What visiting `v` itself costs: an item, plus its bytes for a string.
fn own_units(v: &Value) -> u64 {
    let bytes = match v.kind() {
        ValueKind::String => v.as_str().map_or(0, str::len),
        ValueKind::Bytes => v.as_bytes().map_or(0, <[u8]>::len),
        _ => 0,
    };
    ITEM_UNITS + bytes as u64
}

/// What walking `values` (each deeply or only itself) costs, starting from `units`, or `None`
/// as soon as it reaches `budget`: the walk stops there, so it never costs more than the budget.
fn walk_units(values: &[(&Value, bool)], mut units: u64, budget: u64) -> Option<u64> {
    let mut add = |v: &Value| {
        units = units.saturating_add(own_units(v));
        (units < budget).then_some(())
    };
    let mut stack: Vec<Value> = Vec::new();
    for &(v, deep) in values {
        add(v)?;
        if !deep {
            continue;
        }
        stack.push(v.clone());
        while let Some(x) = stack.pop() {
            let kind = x.kind();
            if !matches!(kind, ValueKind::Seq | ValueKind::Iterable | ValueKind::Map) {
                continue;
            }
            let Ok(items) = x.try_iter() else { continue };
            for item in items {
                add(&item)?;
                if kind == ValueKind::Map {
                    if let Ok(value) = x.get_item(&item) {
                        add(&value)?;
                        stack.push(value);
                    }
                }
                stack.push(item);
            }
        }
    }
    Some(units)
}

/// Walks `values` (each deeply or only itself) and charges the fuel for it; fails as soon as
/// the walk would cost more than the fuel left, before the instruction that needs the walk.
fn charge(state: &State, values: &[(&Value, bool)]) -> std::result::Result<(), JinjaError> {
    charge_with(state, values, 0)
}

/// `charge`, plus `items` the operation will create.
fn charge_with(
    state: &State,
    values: &[(&Value, bool)],
    items: u64,
) -> std::result::Result<(), JinjaError> {
    let Some((_, remaining)) = state.fuel_levels() else {
        return Ok(());
    };
    let budget = remaining.saturating_mul(UNITS_PER_FUEL);
    match walk_units(values, items.saturating_mul(ITEM_UNITS), budget) {
        Some(units) => state.consume_fuel(units.div_ceil(UNITS_PER_FUEL)),
        None => Err(out_of_fuel(state)),
    }
}

/// How many items splitting the string `s` makes at most: `sep` occurrences, or white space or
/// line breaks when there is no separator.
fn pieces(s: &str, sep: Option<&Value>, lines: bool) -> u64 {
    let n = match sep.and_then(Value::as_str) {
        Some(sep) if !sep.is_empty() && !lines => s.matches(sep).count(),
        _ if lines => s
            .chars()
            .filter(|&c| {
                matches!(
                    c,
                    '\n' | '\r' | '\u{b}' | '\u{c}' | '\u{1c}'
                        ..='\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}'
                )
            })
            .count(),
        _ => s.chars().filter(|c| c.is_whitespace()).count(),
    };
    n as u64 + 1
}

/// Items a filter or method creates from a string input: its pieces when split, its
/// characters when the filter iterates it (`list`, `map`, `sort`, ...).
fn string_items(name: &str, args: &[Value], method: bool) -> u64 {
    let Some(s) = args.first().and_then(Value::as_str) else {
        return 0;
    };
    let sep = args.get(1).filter(|v| !v.is_kwargs());
    match name {
        "split" | "rsplit" => pieces(s, sep, false),
        "splitlines" | "lines" => pieces(s, None, true),
        "list" | "batch" | "slice" | "map" | "select" | "reject" | "selectattr" | "rejectattr"
        | "unique" | "sort" | "groupby" | "min" | "max" | "sum" | "join" | "dictsort"
            if !method =>
        {
            s.len() as u64
        }
        _ => 0,
    }
}

fn split_name(mut args: Vec<Value>) -> std::result::Result<(Vec<Value>, String), JinjaError> {
    let name = args
        .pop()
        .and_then(|v| v.as_str().map(str::to_owned))
        .ok_or_else(|| JinjaError::new(ErrorKind::InvalidOperation, "guard without a name"))?;
    Ok((args, name))
}

fn values(args: Rest<ValueOrKwargs>) -> Vec<Value> {
    args.0.into_iter().map(ValueOrKwargs::into_value).collect()
}

/// Walks `v` deeply and charges the fuel for it (for functions that format a value).
pub(super) fn charge_deep(state: &State, v: &Value) -> std::result::Result<(), JinjaError> {
    charge(state, &[(v, true)])
}

/// The list `UnpackList` turns back into `args` on the stack (it pushes a list's items in
/// reverse order, for assignments).
fn restack(mut args: Vec<Value>) -> Value {
    args.reverse();
    Value::from(args)
}

/// Charges `args` (the one at `i` walked deeply when `deep(i)`) plus `items` the operation
/// creates, and gives them back for `UnpackList`.
fn weigh(
    state: &State,
    args: Vec<Value>,
    deep: impl Fn(usize) -> bool,
    items: u64,
) -> std::result::Result<Value, JinjaError> {
    let pairs: Vec<(&Value, bool)> = args.iter().enumerate().map(|(i, v)| (v, deep(i))).collect();
    charge_with(state, &pairs, items)?;
    Ok(restack(args))
}

/// Registers the guards as globals. Their names are not identifiers, so a template can neither
/// call nor shadow them.
pub(super) fn register(env: &mut Environment<'static>) {
    type Args = Rest<ValueOrKwargs>;
    env.add_function(WEIGH_ONE, |state: &State, v: ValueOrKwargs| {
        let v = v.into_value();
        charge(state, &[(&v, true)]).map(|()| v)
    });
    env.add_function(WEIGH_ALL, |state: &State, args: Args| {
        weigh(state, values(args), |_| true, 0)
    });
    env.add_function(WEIGH_SHALLOW, |state: &State, args: Args| {
        weigh(state, values(args), |_| false, 0)
    });
    // The key is walked (hashed or compared), the container only indexed.
    env.add_function(WEIGH_GET_ITEM, |state: &State, args: Args| {
        weigh(state, values(args), |i| i == 1, 0)
    });
    // Map literals: keys are hashed, values only stored.
    env.add_function(WEIGH_MAP_KEYS, |state: &State, args: Args| {
        weigh(state, values(args), |i| i % 2 == 0, 0)
    });
    env.add_function(WEIGH_FILTER, |state: &State, args: Args| {
        let (args, name) = split_name(values(args))?;
        let shallow = filter_input_is_shallow(&name);
        let items = string_items(&name, &args, false);
        weigh(state, args, |i| !(i == 0 && shallow), items)
    });
    env.add_function(WEIGH_TEST, |state: &State, args: Args| {
        let (args, name) = split_name(values(args))?;
        let deep = !test_is_shallow(&name);
        weigh(state, args, |_| deep, 0)
    });
    env.add_function(WEIGH_METHOD, |state: &State, args: Args| {
        let (args, name) = split_name(values(args))?;
        // `loop.changed(x)` keeps `x` in the loop: `loop.changed(loop)` would be a cycle.
        if name == "changed" && args.iter().skip(1).any(|v| v.as_object().is_some()) {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                "loop.changed takes strings, numbers, booleans or none in chat templates",
            ));
        }
        let shallow = method_receiver_is_shallow(&name);
        let items = string_items(&name, &args, true);
        weigh(state, args, |i| !(i == 0 && shallow), items)
    });
}

thread_local! {
    /// The namespaces the render on this thread has made, when one is running.
    static NAMESPACES: std::cell::RefCell<Option<Vec<Value>>> = const { std::cell::RefCell::new(None) };
}

/// `namespace()`, remembering each namespace so that `clear_namespaces` can empty it.
pub(super) fn register_namespace(env: &mut Environment<'static>) {
    env.add_function("namespace", |defaults: Option<ValueOrKwargs>| {
        let ns = minijinja::functions::namespace(defaults)?;
        NAMESPACES.with(|r| {
            if let Some(list) = r.borrow_mut().as_mut() {
                list.push(ns.clone());
            }
        });
        Ok(ns)
    });
}

/// Namespaces are the one value a template can change, so the one way to make a reference
/// cycle (`{% set ns.me = [ns] %}`), which would never be freed: every render would leak. A
/// render therefore runs inside `with_namespaces_cleared`, which afterwards sets every attribute
/// of every namespace the render made to none.
pub(super) fn with_namespaces_cleared<T>(env: &Environment<'_>, render: impl FnOnce() -> T) -> T {
    NAMESPACES.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let result = render();
    let made = NAMESPACES
        .with(|r| r.borrow_mut().take())
        .unwrap_or_default();
    let mut assignments: Vec<(Value, String)> = Vec::new();
    for ns in made {
        let Ok(keys) = ns.try_iter() else { continue };
        for key in keys {
            if let Some(key) = key.as_str() {
                assignments.push((ns.clone(), key.to_owned()));
            }
        }
    }
    // `none` to each attribute: a program of `LoadConst(none), LoadConst(ns), SetAttr(key)`,
    // in chunks that stay well within the fuel.
    for chunk in assignments.chunks(100_000) {
        let mut program = Instructions::new("namespaces", "");
        for (ns, key) in chunk {
            program.add(Instruction::LoadConst(Value::from(())));
            program.add(Instruction::LoadConst(ns.clone()));
            program.add(Instruction::SetAttr(key));
        }
        let mut sink = String::new();
        let mut out = minijinja::machinery::make_string_output(&mut sink);
        let _ = minijinja::machinery::eval(
            env,
            &program,
            Value::UNDEFINED,
            &Default::default(),
            &mut out,
            minijinja::AutoEscape::None,
        );
    }
    result
}

fn unsupported(what: &str) -> Error {
    Error::format(
        "chat template",
        format!("{what} is not supported in chat templates"),
    )
}

/// The instructions that run before `instr` (which then runs unchanged).
fn prelude<'s>(instr: &Instruction<'s>) -> Result<Vec<Instruction<'s>>> {
    let call = |guard: &'static str, n: usize| -> Result<Instruction<'s>> {
        let n = u16::try_from(n).map_err(|_| unsupported("an expression this large"))?;
        Ok(Instruction::CallFunction(guard, Some(n)))
    };
    let named =
        |guard: &'static str, name: &'s str, n: Option<u16>| -> Result<Vec<Instruction<'s>>> {
            let n = n.ok_or_else(|| unsupported("argument unpacking (`*args`)"))?;
            Ok(vec![
                Instruction::LoadConst(Value::from(name)),
                call(guard, usize::from(n) + 1)?,
                Instruction::UnpackList(usize::from(n)),
            ])
        };
    Ok(match instr {
        Instruction::Emit => vec![call(WEIGH_ONE, 1)?],
        Instruction::StringConcat
        | Instruction::Add
        | Instruction::Eq
        | Instruction::Ne
        | Instruction::Lt
        | Instruction::Lte
        | Instruction::Gt
        | Instruction::Gte
        | Instruction::In
        | Instruction::CompareAndPreserve(_) => {
            vec![call(WEIGH_ALL, 2)?, Instruction::UnpackList(2)]
        }
        Instruction::GetItem => vec![call(WEIGH_GET_ITEM, 2)?, Instruction::UnpackList(2)],
        Instruction::Slice => vec![call(WEIGH_SHALLOW, 4)?, Instruction::UnpackList(4)],
        Instruction::BuildMap(pairs) => {
            let n = pairs.saturating_mul(2);
            vec![call(WEIGH_MAP_KEYS, n)?, Instruction::UnpackList(n)]
        }
        Instruction::ApplyFilter(name, n, _) => named(WEIGH_FILTER, name, *n)?,
        Instruction::PerformTest(name, n, _) => named(WEIGH_TEST, name, *n)?,
        Instruction::CallMethod(name, n) => named(WEIGH_METHOD, name, *n)?,
        _ => Vec::new(),
    })
}

/// `instructions` with the guards spliced in.
pub(super) fn guarded<'s>(instructions: &Instructions<'s>) -> Result<Instructions<'s>> {
    let mut old = Vec::new();
    while let Some(instr) = instructions.get(old.len() as u32) {
        old.push(instr);
    }
    let preludes = old.iter().map(|i| prelude(i)).collect::<Result<Vec<_>>>()?;
    // Where each old instruction's prelude starts; one past the end maps to the new end.
    let mut start = Vec::with_capacity(old.len() + 1);
    let mut next: u32 = 0;
    for p in &preludes {
        start.push(next);
        next += p.len() as u32 + 1;
    }
    start.push(next);
    let target = |t: &u32| -> Result<u32> {
        start
            .get(*t as usize)
            .copied()
            .ok_or_else(|| Error::Internal(format!("jump target {t} out of range")))
    };
    let mut out = Instructions::new(instructions.name(), instructions.source());
    for (idx, (instr, prelude)) in old.iter().zip(preludes).enumerate() {
        let line = instructions
            .get_line(idx as u32)
            .and_then(|l| u16::try_from(l).ok())
            .unwrap_or(0);
        for p in prelude {
            out.add_with_line(p, line);
        }
        let moved = match instr {
            Instruction::Jump(t) => Instruction::Jump(target(t)?),
            Instruction::JumpIfFalse(t) => Instruction::JumpIfFalse(target(t)?),
            Instruction::JumpIfFalseOrPop(t) => Instruction::JumpIfFalseOrPop(target(t)?),
            Instruction::JumpIfTrueOrPop(t) => Instruction::JumpIfTrueOrPop(target(t)?),
            Instruction::Iterate(t) => Instruction::Iterate(target(t)?),
            Instruction::BuildMacro(name, t, flags) => {
                Instruction::BuildMacro(name, target(t)?, *flags)
            }
            other => (*other).clone(),
        };
        out.add_with_line(moved, line);
    }
    Ok(out)
}

/// The deepest expression tree `check_constants` walks. `scan::check_source` already bounds a
/// tag's nesting (1,000 operators, and minijinja 150 brackets and blocks); this keeps the walk
/// itself bounded whatever reaches it.
const MAX_WALK_DEPTH: usize = 4096;

thread_local! {
    static WALK_DEPTH: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// One level of `check_constants`' walk, released when dropped.
struct Level;

impl Level {
    fn enter() -> Result<Self> {
        let depth = WALK_DEPTH.with(|d| {
            d.set(d.get() + 1);
            d.get()
        });
        let level = Level;
        if depth > MAX_WALK_DEPTH {
            return Err(Error::format(
                "chat template",
                format!("an expression is nested more than {MAX_WALK_DEPTH} levels deep"),
            ));
        }
        Ok(level)
    }
}

impl Drop for Level {
    fn drop(&mut self) {
        WALK_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Constant operands larger than this (in walk units) are refused at compile time.
const MAX_FOLDED_UNITS: u64 = 1 << 20;

/// minijinja's compiler folds constant expressions without fuel: `[1] * 10**8 ~ ''` would walk
/// a hundred million items while compiling. Every operand that folding would walk (of `~`, `+`,
/// comparisons, `in`) is checked first, innermost first, so no check folds a large value itself.
pub(super) fn check_constants(stmt: &ast::Stmt<'_>) -> Result<()> {
    fn exprs<'a>(items: impl IntoIterator<Item = &'a ast::Expr<'a>>) -> Result<()> {
        items.into_iter().try_for_each(expr)
    }
    fn stmts(items: &[ast::Stmt<'_>]) -> Result<()> {
        items.iter().try_for_each(check_constants)
    }
    fn args(items: &[ast::CallArg<'_>]) -> Result<()> {
        items.iter().try_for_each(|a| match a {
            ast::CallArg::Pos(e)
            | ast::CallArg::Kwarg(_, e)
            | ast::CallArg::PosSplat(e)
            | ast::CallArg::KwargSplat(e) => expr(e),
        })
    }
    fn operand(e: &ast::Expr<'_>) -> Result<()> {
        match e.as_const() {
            Some(v) if walk_units(&[(&v, true)], 0, MAX_FOLDED_UNITS).is_none() => Err(
                Error::format("chat template", "a constant in an expression is too large"),
            ),
            _ => Ok(()),
        }
    }
    fn expr(e: &ast::Expr<'_>) -> Result<()> {
        let _level = Level::enter()?;
        match e {
            ast::Expr::Var(_) | ast::Expr::Const(_) => Ok(()),
            ast::Expr::Slice(s) => {
                expr(&s.expr)?;
                exprs(s.start.iter().chain(&s.stop).chain(&s.step))
            }
            ast::Expr::UnaryOp(u) => expr(&u.expr),
            ast::Expr::BinOp(b) => {
                expr(&b.left)?;
                expr(&b.right)?;
                if !matches!(
                    b.op,
                    ast::BinOpKind::Mul | ast::BinOpKind::ScAnd | ast::BinOpKind::ScOr
                ) {
                    operand(&b.left)?;
                    operand(&b.right)?;
                }
                Ok(())
            }
            ast::Expr::Compare(c) => {
                expr(&c.expr)?;
                for op in &c.ops {
                    expr(&op.expr)?;
                }
                operand(&c.expr)?;
                c.ops.iter().try_for_each(|op| operand(&op.expr))
            }
            ast::Expr::IfExpr(i) => {
                exprs([&i.test_expr, &i.true_expr])?;
                exprs(i.false_expr.iter())
            }
            ast::Expr::Filter(f) => {
                exprs(f.expr.iter())?;
                args(&f.args)
            }
            ast::Expr::Test(t) => {
                expr(&t.expr)?;
                args(&t.args)
            }
            ast::Expr::GetAttr(g) => expr(&g.expr),
            ast::Expr::GetItem(g) => exprs([&g.expr, &g.subscript_expr]),
            ast::Expr::Call(c) => {
                expr(&c.expr)?;
                args(&c.args)
            }
            ast::Expr::List(l) => exprs(&l.items),
            ast::Expr::Tuple(t) => exprs(&t.items),
            ast::Expr::Map(m) => exprs(m.keys.iter().chain(&m.values)),
        }
    }
    let _level = Level::enter()?;
    match stmt {
        ast::Stmt::Template(t) => stmts(&t.children),
        ast::Stmt::EmitExpr(e) => expr(&e.expr),
        ast::Stmt::EmitRaw(_) => Ok(()),
        ast::Stmt::ForLoop(f) => {
            exprs([&f.target, &f.iter])?;
            exprs(f.filter_expr.iter())?;
            stmts(&f.body)?;
            stmts(&f.else_body)
        }
        ast::Stmt::IfCond(i) => {
            expr(&i.expr)?;
            stmts(&i.true_body)?;
            stmts(&i.false_body)
        }
        ast::Stmt::WithBlock(w) => {
            for (target, value) in &w.assignments {
                exprs([target, value])?;
            }
            stmts(&w.body)
        }
        ast::Stmt::Set(s) => exprs([&s.target, &s.expr]),
        ast::Stmt::SetBlock(s) => {
            expr(&s.target)?;
            exprs(s.filter.iter())?;
            stmts(&s.body)
        }
        ast::Stmt::AutoEscape(a) => {
            expr(&a.enabled)?;
            stmts(&a.body)
        }
        ast::Stmt::FilterBlock(f) => {
            expr(&f.filter)?;
            stmts(&f.body)
        }
        ast::Stmt::Block(b) => stmts(&b.body),
        ast::Stmt::Import(i) => exprs([&i.expr, &i.name]),
        ast::Stmt::FromImport(f) => {
            expr(&f.expr)?;
            for (name, alias) in &f.names {
                expr(name)?;
                exprs(alias.iter())?;
            }
            Ok(())
        }
        ast::Stmt::Extends(e) => expr(&e.name),
        ast::Stmt::Include(i) => expr(&i.name),
        ast::Stmt::Macro(m) => {
            exprs(m.args.iter().chain(&m.defaults))?;
            stmts(&m.body)
        }
        ast::Stmt::CallBlock(c) => {
            expr(&c.call.expr)?;
            args(&c.call.args)?;
            exprs(c.macro_decl.args.iter().chain(&c.macro_decl.defaults))?;
            stmts(&c.macro_decl.body)
        }
        ast::Stmt::Do(d) => {
            expr(&d.call.expr)?;
            args(&d.call.args)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its drops.
    #[derive(Debug)]
    struct Probe(Arc<AtomicUsize>);

    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl minijinja::value::Object for Probe {}

    #[test]
    fn namespace_cycles_are_broken_after_a_render() {
        // Found by the chat_template fuzz target (a leak): a namespace holding itself.
        for (src, clear) in [
            (
                "{% set ns = namespace() %}{% set ns.me = [ns, probe] %}",
                true,
            ),
            (
                "{% set a = namespace(p=probe) %}{% set b = namespace(a=a) %}{% set a.b = b %}",
                true,
            ),
            (
                "{% set ns = namespace() %}{% set ns.me = [ns, probe] %}",
                false,
            ),
        ] {
            let dropped = Arc::new(AtomicUsize::new(0));
            let mut env = Environment::new();
            register_namespace(&mut env);
            env.add_template("t", src).unwrap();
            let tmpl = env.get_template("t").unwrap();
            let probe = Value::from_object(Probe(dropped.clone()));
            let ctx = minijinja::context! { probe };
            let out = if clear {
                with_namespaces_cleared(&env, || tmpl.render(ctx))
            } else {
                tmpl.render(ctx)
            };
            assert_eq!(out.unwrap(), "");
            // Without the clearing the cycle keeps the probe alive (the test's own control).
            assert_eq!(dropped.load(Ordering::SeqCst), usize::from(clear), "{src}");
        }
    }
}
