# The reproduction report: the papers' tables and figures with our numbers beside theirs.
