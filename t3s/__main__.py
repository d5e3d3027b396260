from t3s.cli import entry

if __name__ == "__main__":
    entry()
