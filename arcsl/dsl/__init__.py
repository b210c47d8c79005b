"""Grid DSLs that generated programs call.

`common.py` is the clean-room BARC `common` module; the sandbox loads it standalone as `common`.
This package file imports nothing, so `import arcsl.dsl` stays cheap.
"""
