"""data/curate"""
