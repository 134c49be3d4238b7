"""Fail CI when the test run executed nothing, or skipped the PostgreSQL or the real-OPA tests."""

import sys
import xml.etree.ElementTree as ET  # parses our own pytest report, not untrusted input


def main(path: str) -> int:
    root = ET.parse(path).getroot()  # noqa: S314 - our own report
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tests = sum(int(s.get("tests", "0")) for s in suites)
    skipped = sum(int(s.get("skipped", "0")) for s in suites)
    if tests - skipped <= 0:
        print(f"CI: the suite ran no test ({tests} collected, {skipped} skipped)", file=sys.stderr)
        return 1
    required = {"PostgreSQL": "postgres", "real-OPA": "opa's engine is not installed"}
    missed: dict[str, list[str]] = {label: [] for label in required}
    for case in root.iter("testcase"):
        for skip in case.findall("skipped"):
            text = f"{skip.get('message', '')} {skip.text or ''}".lower()
            for label, marker in required.items():
                if marker in text:
                    missed[label].append(f"{case.get('classname')}::{case.get('name')}")
    failed = False
    for label, names in missed.items():
        if names:
            failed = True
            print(f"CI: {label} tests were skipped while CI=true:", file=sys.stderr)
            for name in names:
                print(f"  {name}", file=sys.stderr)
    if failed:
        return 1
    print(f"CI: {tests - skipped} tests ran, {skipped} skipped; no PostgreSQL or real-OPA test was skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
