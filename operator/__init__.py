"""infleet.operator"""
