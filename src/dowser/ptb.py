"""PTB tokenization of captions exactly as pycocoevalcap does it, with or without Java.

pycocoevalcap (the COCO caption scorer lmms-eval uses) runs Stanford CoreNLP 3.4.1's
`PTBTokenizer -preserveLines -lowerCase` over all captions joined by newlines, then drops
the punctuation tokens in its `PUNCTUATIONS` list. That list is written upper-case
(`-LRB-`) while the tokens are lower-cased (`-lrb-`), so brackets are kept as tokens.

    from dowser.ptb import tokenize
    tokenize(["A dog (brown) runs.", "It's 3.5% of the U.S."])
    # ['a dog -lrb- brown -rrb- runs', "it 's 3.5 % of the u.s."]

`tokenize` runs that jar when Java is on PATH (`backend="java"`), else `lex`, a Python
port of the 3.4.1 lexer (`PTBLexer.flex` at CoreNLP tag v3.4.1: the same macros, rules in
the same order, JFlex's longest match with rule order breaking ties, trailing context
counted in the match length). tests/data/ptb_captions.json holds tricky captions with the
Java output they must reproduce.

Where we differ from pycocoevalcap on purpose: it replaces only "\\n" inside a caption,
so a caption holding another line break the lexer knows (\\r, U+2028, U+0085, ...) shifts
every later caption onto the wrong image; we replace all of them by a space first.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import regex

# pycocoevalcap/tokenizer/ptbtokenizer.py PUNCTUATIONS, compared after lower-casing as it
# does (its -LRB- ... entries never match, so they are left out).
DROP = frozenset(["''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"])
_NEWLINES = regex.compile(r"\r\n|[\r\n\u2028\u2029\x0b\x0c\x85]")


def _clean(caption: str) -> str:
    return _NEWLINES.sub(" ", caption)


def _finish(tokens: Sequence[str]) -> str:
    return " ".join(t for t in tokens if t not in DROP)


# --- the Java tokenizer pycocoevalcap ships ------------------------------------------
@functools.cache
def corenlp_jar() -> Path | None:
    """pycocoevalcap's stanford-corenlp-3.4.1.jar, or None when it is not installed."""
    try:
        from pycocoevalcap.tokenizer import ptbtokenizer
    except ImportError:
        return None
    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    return jar if jar.is_file() else None


def java_available() -> bool:
    return shutil.which("java") is not None and corenlp_jar() is not None


def java_lines(captions: Sequence[str]) -> list[list[str]]:
    """Raw lower-cased tokens per caption from the jar (pycocoevalcap's command line)."""
    jar = corenlp_jar()
    if jar is None or shutil.which("java") is None:
        raise RuntimeError("PTB tokenizer: needs `java` on PATH and pycocoevalcap's CoreNLP jar")
    if not captions:
        return []
    # Our own temp file: pycocoevalcap writes into its (maybe read-only) install folder.
    fd, name = tempfile.mkstemp(prefix="dowser-ptb-", suffix=".txt")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(_clean(c) for c in captions))
        proc = subprocess.run(
            ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", "-encoding", "utf-8", name],
            capture_output=True, timeout=600)
    finally:
        os.remove(name)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"PTB tokenizer: java exited {proc.returncode}: {err[-1] if err else ''}")
    lines = proc.stdout.decode("utf-8").split("\n")
    if len(lines) < len(captions):  # would silently pair captions with the wrong images
        raise RuntimeError(f"PTB tokenizer: java returned {len(lines)} lines for {len(captions)} captions")
    return [[t for t in line.rstrip().split(" ") if t] for line in lines[: len(captions)]]


# --- the Python port of PTBLexer.flex (CoreNLP v3.4.1) --------------------------------
# The lexer is %caseless: literals ignore case, character classes do not. `_caseless`
# turns each ASCII letter outside a class into [xX]; `_cs` marks a part kept as written
# (a class of one case, or a literal that must be a capital). (The regex module's
# IGNORECASE with scoped (?-i:) groups loses matches in long alternations: not used.)
def _cs(part: str) -> str:
    return f"\x01{part}\x02"


def _caseless(pat: str) -> str:
    out, i = [], 0
    while i < len(pat):
        c = pat[i]
        if c == "\x01":
            j = pat.index("\x02", i)
            out.append(pat[i + 1:j])
        elif c == "\\":
            nxt = pat[i + 1]
            j = (pat.index("}", i) if nxt in "pP" else i + 5 if nxt == "u" else
                 i + 3 if nxt == "x" else i + 1)
            out.append(pat[i:j + 1])
        elif c == "[":  # a character class: verbatim
            j = i + 1 + (pat[i + 1] == "^")
            j += pat[j] == "]"
            while pat[j] != "]":
                j += 2 if pat[j] == "\\" else 1
            out.append(pat[i:j + 1])
        elif c == "{":  # a quantifier
            j = pat.index("}", i)
            out.append(pat[i:j + 1])
        elif c == "(" and pat[i + 1] == "?":  # (?: ...
            j = i + 1
            out.append("(?")
        elif c.isascii() and c.isalpha():
            j = i
            out.append(f"[{c.lower()}{c.upper()}]")
        else:
            j = i
            out.append(c)
        i = j + 1
    return "".join(out)


SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
NEWLINE = r"(?:\r\n|\r|\n|\u2028|\u2029|\x0b|\x0c|\x85)"
SPACENL = f"(?:{SPACE}|{NEWLINE})"
SPACENLS = f"(?:{SPACENL})+"
_NAME = r"[A-Za-z][A-Za-z0-9_:.\-]*"
SGML = (r"<(?:[!?][A-Za-z\-][^>\r\n]*|" + _NAME + r"(?:[ ]+(?:" + _NAME + "|" + _NAME
        + r"""[ ]*=[ ]*(?:'[^']*'|"[^"]*")))*[ ]*/?|/""" + _NAME + r")[ ]*>")
_UPPER = _cs(r"\p{Lu}")  # JFlex [:uppercase:]
SENTEND = f"{SPACENL}(?:{SPACENL}|{_UPPER}|{SGML})"
DIGIT = r"[\p{Nd}\u07C0-\u07C9]"
JDIGIT = r"\p{Nd}"  # JFlex [:digit:]
JLETTER = r"\p{L}"  # JFlex [:letter:]
DATE = f"{DIGIT}{{1,2}}[\\-/]{DIGIT}{{1,2}}[\\-/]{DIGIT}{{2,4}}"
NUM = f"(?:{DIGIT}+|{DIGIT}*(?:[.:,\u00AD\u066B\u066C]{DIGIT}+)+)"
NUMBER = f"[\\-+]?{NUM}"
SUBSUPNUM = r"[\u207A\u207B\u208A\u208B]?(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)"
FRAC = f"(?:{DIGIT}{{1,4}}[\\- \u00A0])?{DIGIT}{{1,4}}(?:\\\\?/|\u2044){DIGIT}{{1,4}}"
FRAC2 = r"[\u00BC\u00BD\u00BE\u2153-\u215E]"
DOLSIGN = r"(?:" + _cs("[A-Z]") + r"*\$|#)"
DOLSIGN2 = r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4\uFFE0\uFFE1\uFFE5\uFFE6]"
_LETTER_EXTRA = (
    r"[\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F\u0370-\u037D"
    r"\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF\u04F6-\u04FF\u0510-\u0525"
    r"\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4\u05C5\u05C7\u0615-\u061A\u063B-\u063F"
    r"\u064B-\u065E\u0670\u06D6-\u06EF\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F"
    r"\u07A6-\u07B1\u07CA-\u07F5\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955"
    r"\u0962-\u0963\u0981-\u0983\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3"
    r"\u0A01-\u0A03\u0A3C\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2"
    r"\u0BC6-\u0BC8\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48"
    r"\u0E30-\u0E3A\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD]")
LETTER = f"(?:{JLETTER}|&[aeiouAEIOU](?:acute|grave|uml);|{_LETTER_EXTRA})"
WORD = f"{LETTER}(?:{LETTER}|{DIGIT})*(?:[.!?]{LETTER}(?:{LETTER}|{DIGIT})*)*"
FILENAME_EXT = ("bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|"
                "mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip")
FILENAME = f"(?:{LETTER}|{DIGIT})+(?:[.](?:{LETTER}|{DIGIT})+)*(?:[.](?:{FILENAME_EXT}))"
APOS = r"(?:['\u0092\u2019]|&apos;)"
APOSETC = r"(?:['\u0092\u2019]|&apos;|[`\u0091\u2018\u201B])"
HYPHEN = r"[\-_\u058A\u2010\u2011]"
_LD = f"(?:{JLETTER}|{JDIGIT})"
THING = (f"(?:[dDoOlL]{APOSETC}{_LD})?{_LD}+"
         f"(?:{HYPHEN}(?:[dDoOlL]{APOSETC}{_LD})?{_LD}+)*")
THINGA = _cs("[A-Z]") + r"+(?:(?:[+&]|&amp;)" + _cs("[A-Z]") + ")+"
THING3 = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
ACRO = r"(?:[A-Za-z](?:\.[A-Za-z])*|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R))"
ACRO2 = r"(?:[A-Za-z](?:\.[A-Za-z])+|(?:Canada|Sino|Korean|EU|Japan|non)-U\.S|U\.S\.-(?:U\.K|U\.S\.S\.R))"
HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*(?:-(?:[A-Za-z0-9\u00AD]+|{ACRO2}\\.))+"
REDAUX = f"{APOS}(?:{_cs('[msdMSD]')}|re|ve|ll)"
SWORD = r"[A-Za-z\u00AD]*" + _cs("[A-MO-Za-mo-z]") + r"\u00AD*"
SREDAUX = f"n{APOSETC}t"
APOWORD = "|".join([
    f"{APOS}n{APOS}?", f"[lLdDjJ]{APOS}", f"Dunkin{APOS}", f"somethin{APOS}", f"ol{APOS}",
    f"{APOS}em", f"{_cs('[A-HJ-XZn]')}{APOSETC}{JLETTER}{{2}}{JLETTER}*", f"{APOS}[2-9]0s",
    f"{APOS}till?",
    f"{JLETTER}{JLETTER}*{_cs('[aeiouyAEIOUY]')}{APOSETC}{_cs('[aeiouA-Z]')}{JLETTER}*",
    f"{APOS}cause", r"cont'd\.?", "'twas", "nor'easter", "c'mon", "e'er", "s'mores", "ev'ry",
    "li'l", "nat'l", f"O{APOSETC}o"])
APOWORD2 = f"y{APOS}"
FULLURL = r"""https?://[^ \t\n\f\r"<>|(){}]+[^ \t\n\f\r"<>|.!?(){},-]"""
LIKELYURL = (r"""(?:(?:www\.(?:[^ \t\n\f\r"<>|.!?(){},]+\.)+""" + _cs("[a-zA-Z]") + r"{2,4})|"
             # `,-_` is a range (0x2C-0x5F) in the original too: kept as written.
             + "(?:" + _cs(r"""[^ \t\n\f\r"`'<>|.!?(){},-_$]""") + r"+\.)+(?:com|net|org|edu))"
             + r"""(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},-])?""")
EMAIL = (r"""(?:&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00A0{}]*@"""
         r"""(?:[^ \t\n\f\r"<>|(){}.\u00A0]+\.)*(?:[^ \t\n\f\r"<>|(){}.\u00A0]+)(?:&gt;|>)?""")
TWITTER = f"@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+"
ABMONTH = "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec"
ABDAYS = "Mon|Tue|Tues|Wed|Thu|Thurs|Fri"
_UP = {c: _cs(c) for c in "ADILMOPTW"}  # [A]z, [M]ass ...: capital first letter required
ABSTATE = ("Ala|Ariz|{A}z|{A}rk|Calif|Colo|Conn|Ct|Dak|{D}el|Fla|Ga|{I}ll|Ind|Kans?|Ky|{L}a|"
           "{M}ass|Md|Mich|Minn|{M}iss|Mo|Mont|Neb|Nev|Okla|{O}re|{P}a|Penn|Tenn|{T}ex|Va|Vt|"
           "{W}ash|Wisc?|Wyo").format(**_UP)
ABCOMP = "Inc|Cos?|Corp|Pp?t" + _cs("[ye]") + "s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys"
ABNUM = "tel|est|ext|sq"
ABPTIT = r"Jr|Sr|Bros|(?:Ed|Ph)\.D|Blvd|Rd|Esq"
ABBREV1 = f"(?:{ABMONTH}|{ABDAYS}|{ABSTATE}|{ABCOMP}|{ABNUM}|{ABPTIT}|etc|al|seq|Bldg)\\."
ABTITLE = ("Mr|Mrs|Ms|{M}iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|"
           "Sgt|Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|"
           "Asst|Assoc|Ens|Insp|Mlle|Mme|Msgr|Sfc").format(**_UP)
ABCOMP2 = "Invt|Elec|Natl|M" + _cs("[ft]") + "g|Dept"
ABBREV4 = f"(?:{ABTITLE}|vs|Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS|Ph|{ACRO}|{ABCOMP2})"
ABBREV2 = f"{ABBREV4}\\."
ACRONYM = f"{ACRO}\\."
ABBREV3 = r"(?:ca|figs?|prop|nos?|art|bldg|prop|pp|op)\."
PHONE = (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[\- \u00A0])?[0-9]{2,4}[\- \u00A0])"
         r"[0-9]{3,4}[\- \u00A0]?[0-9]{3,5}|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
LDOTS = r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]"
INSENTP = r"[,;:\u3001]"
QUOTES = (f"{APOS}|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094"
          f"\u201E\u201F\u2039\u203A\u00AB\u00BB]{{1,2}}")
DBLQUOT = r'(?:"|&quot;)'
TBSPEC = (r"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500|S(?:&|&amp;)Ls|"
          f"Cap{APOS}n|c{APOS}est")
TBSPEC2 = f"{APOS}[0-9][0-9]"
SMILEY = r"[<>]?[:;=]" + _cs(r"[\-o\*']") + "?" + _cs(r"[\(\)DPdpO\\{@\|\[\]]")
_AS = _cs(r"[\^x=~<>]")
ASIANSMILEY = _cs(
    r"[\^x=~<>]\.\[\^x=~<>\]|[\-\^x=~<>']_[\-\^x=~<>']|\([\-\^x=~<>'][_.]?[\-\^x=~<>']\)"
    r"|\([\^x=~<>']-[\^x=~<>'`]\)")
MISCSYMBOL = (
    "[+%&~\\^|\\\\¦\u00A7¨\u00A9\u00AC\u00AE¯\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387\u05BE"
    "\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B\u061E\u066A"
    "\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016\u2017\u2020-\u2023"
    "\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E\u2100-\u214F\u2190-\u21FF"
    "\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20\uFF3B-\uFF40\uFF5B-\uFF65]")
_ACRONYM_NEXT = "|".join(
    _cs(w[0]) + regex.escape(w[1:]) for w in
    "About According Additionally After An A As At But Earlier He Her Here However If In It "
    "Last Many More Mr. Ms. Now Once One Other Our She Since So Some Such That The Their Then "
    "There These They This We When While What Yet You".split())

# (name, pattern, trailing context or None, action). Actions: "tok" keeps the text;
# a string maps the token to that text; "skip" drops it; "push:N" returns all but the last
# N characters (re-read next); the rest are named below. Order = the .flex rule order.
RULES = [
    ("cpp", r"c[+][+]", None, "tok"), ("csharp", r"(?:c|f)#", None, "tok"),
    ("cannot", "cannot", None, "push:3"), ("twas", "'twas", None, "push:3"),
    ("tis", "'tis", None, "push:2"), ("gonna", "gonna|gotta|lemme|gimme|wanna", None, "push:2"),
    ("sgml", SGML, None, "nbsp"),
    ("spmdash", r"&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", None, "--"),
    ("spamp", "&amp;", None, "amp"),
    ("sppunc", r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);", None, "tok"),
    ("word_redaux", WORD, REDAUX, "soft"), ("sword", SWORD, SREDAUX, "soft"),
    ("word", WORD, None, "soft"),
    ("apoword", APOWORD, None, "tok"), ("apoword2", APOWORD2, JLETTER, "tok"),
    ("fullurl", FULLURL, None, "tok"), ("likelyurl", LIKELYURL, None, "tok"),
    ("email", EMAIL, None, "tok"), ("twitter", TWITTER, None, "tok"),
    ("redaux1", REDAUX, "[^A-Za-z]", "right"), ("sredaux1", SREDAUX, "[^A-Za-z]", "right"),
    ("date", DATE, None, "tok"), ("number", NUMBER, None, "soft"),
    ("subsupnum", SUBSUPNUM, None, "tok"), ("frac", FRAC, None, "nbsp"), ("frac2", FRAC2, None, "frac2"),
    ("tbspec", TBSPEC, None, "amp"), ("thing3", THING3, None, "tok"), ("dolsign", DOLSIGN, None, "tok"),
    ("dolsign2", DOLSIGN2, None, "currency"),
    ("acronym_end", ACRONYM, f"{SPACENLS}(?:{_ACRONYM_NEXT}|{SGML}){SPACENL}", "acronym"),
    ("abbrev3", ABBREV3, f"{SPACENL}?{JDIGIT}", "tok"),
    ("pty", r"(?:pt" + _cs("[eyEY]") + r"|co)\.", f"{SPACE}(?:ltd|lim)", "tok"),
    ("abbrev1_end", ABBREV1, SENTEND, "abbrev_end"),
    ("abbrev1_mid", ABBREV1, r"[\s\S][\s\S]", "tok"),  # JFlex [^][^]: any two characters
    ("abbrev1", ABBREV1, None, "abbrev_end"), ("abbrev2", ABBREV2, None, "tok"),
    ("abbrev4", ABBREV4, SPACE, "tok"), ("acro", ACRO, SPACENL, "tok"),
    ("tbspec2", TBSPEC2, SPACENL, "tok"), ("filename", FILENAME, f"(?:{SPACENL}|[.?!,])", "tok"),
    ("word_dot", f"{WORD}\\.", INSENTP, "soft"),
    ("phone", PHONE, None, "phone"), ("dblquot_left", DBLQUOT, "[A-Za-z0-9$]", "left"),
    ("dblquot", DBLQUOT, None, "right"), ("del", r"\x7f", None, "skip"),
    ("lt", "<|&lt;", None, "<"), ("gt", ">|&gt;", None, ">"),
    ("smiley", SMILEY, "[^A-Za-z0-9]", "parens"), ("asiansmiley", ASIANSMILEY, None, "parens"),
    ("lcb", r"\{", None, "-LCB-"), ("rcb", r"\}", None, "-RCB-"), ("lsb", r"\[", None, "-LSB-"),
    ("rsb", r"\]", None, "-RSB-"), ("lrb", r"\(", None, "-LRB-"), ("rrb", r"\)", None, "-RRB-"),
    ("hyphens", r"\-+", None, "hyphens"), ("ldots", LDOTS, None, "..."),
    ("fnmarks", "@+|#+|_+", None, "tok"), ("asts", r"\*+|(?:\\\*){1,3}", None, "tok"),
    ("insentp", INSENTP, None, "tok"), ("qe", "[?!]+", None, "tok"),
    ("period", "[.¡¿\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", None, "tok"),
    ("eq", "=", None, "tok"), ("slash", "/", None, "tok"),
    ("hthing_dot", f"{HTHING}\\.", INSENTP, "soft"), ("hthing", HTHING, None, "soft"),
    ("thing_dot", f"{THING}\\.", INSENTP, "tok"), ("thing", THING, None, "tok"),
    ("thinga_dot", f"{THINGA}\\.", INSENTP, "amp"), ("thinga", THINGA, None, "amp"),
    ("quote_left", "'", "[A-Za-z][^ \t\n\r\u00A0]", "left"), ("redaux", REDAUX, None, "right"),
    ("sredaux", SREDAUX, None, "right"), ("quotes", QUOTES, None, "right"),
    ("duckfeet", "<<|>>", None, "tok"), ("misc", MISCSYMBOL, None, "tok"),
    ("space", "\x00|" + SPACE + "+|[\u200B\u200E\u200F\uFEFF]", None, "skip"),
    ("newline", NEWLINE, None, "newline"), ("nbsp_ent", "&nbsp;", None, "skip"),
    ("any", "[^\n]", None, "skip"),  # untokenizable: deleted (the default firstDelete)
]
_FLAGS = regex.POSIX | regex.V0  # POSIX: leftmost-longest, as a JFlex DFA matches


def _rx(pat: str):
    return regex.compile(_caseless(pat), _FLAGS)


_COMPILED = [(name, _rx(f"(?:{pat})(?:{trail})" if trail else pat),
              _rx(pat) if trail else None, _rx(trail) if trail else None, action)
             for name, pat, trail, action in RULES]
_QUOTE_MAPS = [("[\u0091\u2018\u201B\u2039]", "`"), ("[\u0092\u2019\u203A]", "'"),
               ("[\u0093\u201C\u00AB]", "``"), ("[\u0094\u201D\u00BB]", "''")]
_FRACTIONS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _latex_quotes(tok: str, left: bool) -> str:
    tok = regex.sub("&apos;|'", "`" if left else "'", tok)
    tok = regex.sub('"|&quot;', "``" if left else "''", tok)
    for pat, rep in _QUOTE_MAPS:
        tok = regex.sub(pat, rep, tok)
    return tok


def _soft(tok: str) -> str:
    out = tok.replace("\u00AD", "")
    return out if out or not tok else "-"


def _match(text: str, pos: int):
    """Longest match at pos over all rules (trailing context counts); first rule wins ties."""
    best = None
    for name, full, head, trail, action in _COMPILED:
        m = full.match(text, pos)
        if m is None or (best is not None and m.end() <= best[0]):
            continue
        end, tok_end = m.end(), m.end()
        if head is not None:  # split off the trailing context: longest head that fits
            tok_end = next((k for k in range(end - 1, pos, -1)
                            if head.fullmatch(text, pos, k) and trail.fullmatch(text, k, end)), end)
        best = (end, tok_end, action)
    return best


def _act(text: str, start: int, end: int, action: str) -> tuple[str | None, int]:
    """The token text (None: no token) and the position where lexing resumes."""
    tok = text[start:end]
    if action == "tok":
        return tok, end
    if action == "skip":
        return None, end
    if action.startswith("push:"):
        end -= int(action[5:])
        return text[start:end], end
    if action == "soft":
        return _soft(tok), end
    if action == "nbsp":
        return tok.replace(" ", "\u00A0"), end
    if action == "amp":
        return regex.sub("(?i:&amp;)", "&", tok), end
    if action in ("left", "right"):
        return _latex_quotes(tok, action == "left"), end
    if action == "frac2":
        return "".join(_FRACTIONS.get(c, c) for c in tok), end
    if action == "currency":
        tok = tok.replace("\u00A2", "cents").replace("\u00A3", "#")
        return regex.sub("[\u0080\u00A4\u20A0\u20AC]", "$", tok), end
    if action == "phone":
        tok = tok.replace(" ", "\u00A0")
        return tok.replace("(", "-LRB-").replace(")", "-RRB-"), end
    if action == "parens":
        return tok.replace("(", "-LRB-").replace(")", "-RRB-"), end
    if action == "hyphens":
        return ("--" if 3 <= len(tok) <= 4 else tok), end
    if action == "acronym":  # the flex action: strip trailing space the match kept
        while end > start and text[end - 1] in " \t\n\x0b\x0c\r\x85":
            end -= 1
        if end - start == 2:  # "I." -> "I", then "." next
            return text[start:end - 1], end - 1
        return text[start:end], end - 1  # "U.S." and, next, "." again
    if action == "abbrev_end":
        return tok, end - 1  # "etc." and, next, "." again
    if action == "newline":
        return "\n", end
    return action, end  # a fixed replacement ("--", "-LRB-", "...", "<" ...)


# Shortcuts, same result as `_match`: a run of spaces is skipped (no other rule starts
# with a space), an ASCII word followed by a space or the end is itself a token (every
# other rule that starts with a letter needs a character other than a letter or space:
# ' - . / @ & + $ _ digits, or is one of the assimilations split below).
_FAST_SPACE = regex.compile(r" +")
_FAST_WORD = regex.compile(r"[A-Za-z]+(?= |\Z)")
_ASSIMILATIONS = {"cannot", "gonna", "gotta", "lemme", "gimme", "wanna"}


def lex(text: str) -> list[str]:
    """Tokens of `text` as PTBTokenizer 3.4.1 returns them ("\\n" for a line break)."""
    tokens, pos = [], 0
    while pos < len(text):
        fast = _FAST_SPACE.match(text, pos)
        if fast:
            pos = fast.end()
            continue
        fast = _FAST_WORD.match(text, pos)
        if fast and fast.group().lower() not in _ASSIMILATIONS:
            tokens.append(fast.group())
            pos = fast.end()
            continue
        end, tok_end, action = _match(text, pos)
        tok, pos_next = _act(text, pos, tok_end, action)
        if tok is not None:
            tokens.append(tok)
        pos = pos_next if pos_next > pos else pos + 1
    return tokens


def python_lines(captions: Sequence[str]) -> list[list[str]]:
    """Raw lower-cased tokens per caption, from `lex` over the newline-joined captions."""
    lines: list[list[str]] = [[]]
    for tok in lex("\n".join(_clean(c) for c in captions)):
        if tok == "\n":
            lines.append([])
        else:
            lines[-1].append(tok.lower())
    return lines[: len(captions)] if captions else []


def tokenize(captions: Sequence[str], backend: str = "auto") -> list[str]:
    """pycocoevalcap's tokenized captions, one string per caption, punctuation dropped.

    backend: "java" (CoreNLP, as pycocoevalcap), "python" (the port), "auto" (java when
    available). Captions are tokenized together: a line's end can depend on the next one.
    """
    if backend not in ("auto", "java", "python"):
        raise ValueError(f"PTB tokenizer: backend must be auto, java or python, not {backend!r}")
    use_java = backend == "java" or (backend == "auto" and java_available())
    lines = java_lines(captions) if use_java else python_lines(captions)
    return [_finish(t) for t in lines]
