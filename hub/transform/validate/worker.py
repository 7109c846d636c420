"""The ANS schematron validator process: `python -m hub.transform.validate.worker FOLDER [SET...]`, started by
`hub.transform.validate.schematron.IsolatedSchematrons` (one per hub process). It compiles the rules, then answers
one JSON line on stdout per request line on stdin. Nothing else uses it.
"""

import sys

from hub.transform.validate.schematron import serve

if __name__ == "__main__":
    serve(sys.argv[1], tuple(sys.argv[2:]) or None, sys.stdin, sys.stdout)
